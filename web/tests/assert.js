// The few assertions the tests need, so that they load nothing from the network.
export function assert(condition, message = "assertion failed") {
  if (!condition) throw new Error(message);
}

export function assertEquals(got, want, message = "") {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
  if (g !== w) throw new Error(`${message} expected ${w}, got ${g}`);
}

/** `promise()` rejects with an error whose message contains `part`. */
export async function assertRejects(promise, part) {
  let error;
  try {
    await promise();
  } catch (e) {
    error = e;
  }
  if (error === undefined) throw new Error(`expected a rejection containing ${JSON.stringify(part)}`);
  const message = String(error?.message ?? error);
  if (!message.includes(part)) throw new Error(`rejected with ${JSON.stringify(message)}, expected it to contain ${JSON.stringify(part)}`);
}
