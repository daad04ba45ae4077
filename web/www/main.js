// Runs the crate's self-check and the benchmark on the browser's WebGPU and
// shows them; the results also land as JSON in #result, for the browser test.
import init, { Gpu } from "../pkg/wgpu_batchnorm_web.js";

const result = { adapter: null, checks: 0, failed: null, failures: [], rows: [], checkSeconds: null, error: null };
const $ = (id) => document.getElementById(id);

try {
  if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is undefined)");
  await init();
  const gpu = await Gpu.create();
  // wgpu's description of a browser's adapter is its `description`, often
  // empty; the browser's own adapter info says which one it is.
  const info = (await navigator.gpu.requestAdapter())?.info;
  const browserInfo = [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(" ");
  result.adapter = `${browserInfo} ${gpu.adapter()}`.trim();
  $("adapter").textContent = result.adapter;

  const start = performance.now();
  const report = await gpu.selfCheck(true);
  result.checkSeconds = (performance.now() - start) / 1000;
  result.checks = report.checks;
  result.failed = report.failed;
  result.failures = report.lines.filter((l) => l.startsWith("FAILED"));
  const check = $("check");
  check.className = report.failed === 0 ? "ok" : "failed";
  check.textContent = report.failed === 0
    ? `All ${report.checks} checks within docs/SPEC.md's bounds (${result.checkSeconds.toFixed(1)} s).`
    : `${report.failed} of ${report.checks} checks past their bounds: ${result.failures.join("; ")}`;

  result.rows = await gpu.benchmark(5);
  const body = $("bench").tBodies[0];
  for (const row of result.rows) {
    const tr = body.insertRow();
    for (const v of [row.op, row.shape, row.ms.toFixed(3), row.gbps.toFixed(2), row.timer]) tr.insertCell().textContent = v;
  }
} catch (e) {
  result.error = String(e?.message ?? e);
  $("check").className = "failed";
  $("check").textContent = `Error: ${result.error}`;
}
$("result").textContent = JSON.stringify(result);
