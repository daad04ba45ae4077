// The web package on Deno's WebGPU (wgpu on the machine's Vulkan driver):
// the crate's own check against its f64 reference inside wasm, then direct
// calls against values worked out here in f64, and the errors a caller gets.
// Run by `npm test` in web/ after `web/build.sh`.
import { assert, assertEquals, assertRejects } from "./assert.js";
import init, { Gpu } from "../pkg/wgpu_batchnorm_web.js";

await init({ module_or_path: await Deno.readFile(new URL("../pkg/wgpu_batchnorm_web_bg.wasm", import.meta.url)) });
const gpu = await Gpu.create();
console.log(`adapter: ${gpu.adapter()}`);

/** Normwise relative error of `got` (f32) against `want` (f64): at most `tol`. */
function assertClose(what, got, want, tol = 1e-6) {
  assertEquals(got.length, want.length, `${what}: length`);
  let diff = 0, norm = 0;
  for (let i = 0; i < want.length; i++) {
    diff += (got[i] - want[i]) ** 2;
    norm += want[i] ** 2;
  }
  const err = Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
  assert(err <= tol, `${what}: relative error ${err} over ${tol}\n got  ${Array.from(got)}\n want ${want}`);
}

/** Layer norm over rows of `d` in f64: y, mean, rstd, and the backward at `dy`. */
function layerNorm(x, d, gamma, beta, eps, dy) {
  const rows = x.length / d, y = [], mean = [], rstd = [], dx = [];
  const dgamma = new Array(d).fill(0), dbeta = new Array(d).fill(0);
  for (let r = 0; r < rows; r++) {
    const row = x.slice(r * d, (r + 1) * d);
    const m = row.reduce((a, v) => a + v, 0) / d;
    const v = row.reduce((a, v) => a + (v - m) ** 2, 0) / d;
    const s = 1 / Math.sqrt(v + eps);
    mean.push(m);
    rstd.push(s);
    const xhat = row.map((v) => (v - m) * s);
    xhat.forEach((h, j) => y.push(h * gamma[j] + beta[j]));
    const g = xhat.map((_, j) => dy[r * d + j] * gamma[j]);
    const sumG = g.reduce((a, v) => a + v, 0);
    const sumGX = g.reduce((a, v, j) => a + v * xhat[j], 0);
    xhat.forEach((h, j) => {
      dx.push((s / d) * (d * g[j] - sumG - h * sumGX));
      dgamma[j] += dy[r * d + j] * h;
      dbeta[j] += dy[r * d + j];
    });
  }
  return { y, mean, rstd, dx, dgamma, dbeta };
}

// The crate's check, run once: its report is what the next two tests read.
const report = await gpu.selfCheck(true);

Deno.test("the crate's check: every op, dtype and layout within SPEC's bounds of the f64 reference", () => {
  const failed = report.lines.filter((l) => l.startsWith("FAILED"));
  assertEquals(failed, []);
  assertEquals(report.failed, 0);
  assertEquals(report.checks, 315);
  assertEquals(JSON.parse(report.json).length, 315);
});

// The native check's report (`gpu_check --quick --json FILE`), where CI wrote one:
// the same outputs checked, each within its bound on both runtimes.
const native = Deno.env.get("NATIVE_CHECK_JSON");
Deno.test({
  name: "the check on Deno's WebGPU matches the native one's outputs (NATIVE_CHECK_JSON)",
  ignore: !native,
  fn: async () => {
    const want = JSON.parse(await Deno.readTextFile(native));
    const got = JSON.parse(report.json);
    assertEquals(got.map((o) => `${o.check}: ${o.output}`), want.map((o) => `${o.check}: ${o.output}`));
    assert(want.every((o) => o.pass) && got.every((o) => o.pass), "every output within its bound on both");
    const gap = Math.max(...got.map((o, i) => Math.abs(o.of_bound - want[i].of_bound)));
    console.log(`largest difference of an output's error, as a multiple of its bound, from the native run: ${gap}`);
  },
});

Deno.test("batch norm of [1, 2, 3, 4]: statistics, output, running statistics, backward and inference", async () => {
  const x = new Float32Array([1, 2, 3, 4]);
  const eps = 1e-5, rstd = 1 / Math.sqrt(1.25 + eps);
  const out = await gpu.norm({
    op: "batch", x, dims: [4, 1], gamma: [2], beta: [0.5], runningMean: [0], runningVar: [1],
  });
  assertClose("y", out.y, [1, 2, 3, 4].map((v) => 2 * (v - 2.5) * rstd + 0.5));
  assertClose("mean", out.mean, [2.5]);
  assertClose("rstd", out.rstd, [rstd]);
  // PyTorch's update at momentum 0.1, with the unbiased variance 5/3.
  assertClose("running mean", out.runningMean, [0.25]);
  assertClose("running var", out.runningVar, [0.9 + 0.1 * 5 / 3]);

  // A constant upstream gradient: dx is 0, dbeta the count, dgamma sum(xhat) = 0.
  const grads = await gpu.normBackward({
    op: "batch", dy: new Float32Array([1, 1, 1, 1]), x, dims: [4, 1], mean: out.mean, rstd: out.rstd, gamma: [2],
  });
  for (const v of grads.dx) assert(Math.abs(v) < 1e-6, `dx ${grads.dx}`);
  assertClose("dbeta", grads.dbeta, [4]);
  assert(Math.abs(grads.dgamma[0]) < 1e-6, `dgamma ${grads.dgamma}`);

  const inference = await gpu.normInference({
    op: "batch", x, dims: [4, 1], gamma: [2], beta: [0.5], runningMean: [1], runningVar: [4],
  });
  assertClose("inference y", inference.y, [1, 2, 3, 4].map((v) => 2 * (v - 1) / Math.sqrt(4 + eps) + 0.5));

  // The backward at the running statistics: dx = gamma * dy / sqrt(var + eps), dgamma = sum(dy * xhat).
  const dy = [0.5, -1, 2, 0.25];
  const atRunning = await gpu.normBackward({
    op: "batch", dy: new Float32Array(dy), x, dims: [4, 1], gamma: [2], runningMean: [1], runningVar: [4],
  });
  const s = 1 / Math.sqrt(4 + eps);
  assertClose("inference dx", atRunning.dx, dy.map((d) => 2 * d * s));
  assertClose("inference dgamma", atRunning.dgamma, [dy.reduce((a, d, i) => a + d * (i + 1 - 1) * s, 0)]);
  assertClose("inference dbeta", atRunning.dbeta, [dy.reduce((a, d) => a + d, 0)]);
});

Deno.test("layer norm forward and backward against f64 worked out here", async () => {
  const x = [1, 2, 3, 4, 6, 8.5], dy = [0.5, -1, 2, 1, 0.25, -0.75];
  const gamma = [1, 2, 3], beta = [0, 0, 1];
  const want = layerNorm(x, 3, gamma, beta, 1e-5, dy);
  const out = await gpu.norm({ op: "layer", x: new Float32Array(x), dims: [2, 3], gamma, beta });
  assertClose("y", out.y, want.y);
  assertClose("mean", out.mean, want.mean);
  assertClose("rstd", out.rstd, want.rstd);
  const grads = await gpu.normBackward({
    op: "layer", dy: new Float32Array(dy), x: new Float32Array(x), dims: [2, 3], mean: out.mean, rstd: out.rstd, gamma,
  });
  assertClose("dx", grads.dx, want.dx, 1e-5);
  assertClose("dgamma", grads.dgamma, want.dgamma);
  assertClose("dbeta", grads.dbeta, want.dbeta);
});

Deno.test("RMS norm of [3, 4], group norm of two groups, channels-last instance norm", async () => {
  // RMS norm's default eps is f32's machine epsilon.
  const eps = 2 ** -23, s = 1 / Math.sqrt(12.5 + eps);
  const rms = await gpu.norm({ op: "rms", x: [3, 4], dims: [1, 2], gamma: [1, -2] });
  assertEquals(rms.mean, undefined);
  assertClose("rms y", rms.y, [3 * s, -8 * s]);
  assertClose("rms rstd", rms.rstd, [s]);

  // Channels [1, 3] and [5, 9]: means 2 and 7, variances 1 and 4.
  const group = await gpu.norm({ op: "group", x: [1, 3, 5, 9], dims: [1, 4, 1, 1], groups: 2, eps: 0 });
  assertClose("group y", group.y, [-1, 1, -1, 1]);
  assertClose("group mean", group.mean, [2, 7]);
  assertClose("group rstd", group.rstd, [1, 0.5]);

  // Channels-last instance norm of (N, H, W, C) = (1, 2, 1, 2): channel 0 is [1, 3], channel 1 [10, 20].
  const instance = await gpu.norm({ op: "instance", x: [1, 10, 3, 20], dims: [1, 2, 1, 2], layout: "channels_last", eps: 0 });
  assertClose("instance y", instance.y, [-1, -1, 1, 1]);
  assertClose("instance mean", instance.mean, [2, 15]);
});

Deno.test("a wrong argument rejects with the crate's error, and the context still works", async () => {
  await assertRejects(() => gpu.norm({ op: "layer", x: [1, 2, 3], dims: [2, 2] }), "x: 3 values for dims [2, 2]");
  await assertRejects(() => gpu.norm({ op: "group", x: [1, 2, 3, 4], dims: [1, 4, 1, 1], groups: 3 }), "groups");
  await assertRejects(() => gpu.norm({ op: "layer", x: [1, 2], dims: [1, 2], gamma: [1, 1] }), "beta");
  await assertRejects(() => gpu.norm({ op: "softmax", x: [1], dims: [1] }), "op \"softmax\"");
  const out = await gpu.norm({ op: "layer", x: [1, 3], dims: [1, 2], eps: 0 });
  assertClose("after the errors", out.y, [-1, 1]);
});

Deno.test("the page's benchmark runs every row", async () => {
  const rows = await gpu.benchmark(1);
  assertEquals(rows.length, 10);
  for (const row of rows) assert(row.ms > 0 && Number.isFinite(row.gbps), JSON.stringify(row));
});
