// A producer that pushes text chunks (a generation's token callback, an IPC stream) as an async
// iterable: chunks that arrive while the consumer is busy are joined, the producer's error comes after
// the chunks that preceded it, and a consumer that leaves the loop early stops the producer.

export async function* pullChunks(run: (push: (chunk: string) => void) => Promise<unknown>, stop: () => void): AsyncGenerator<string, void, undefined> {
  const chunks: string[] = [];
  let wake: (() => void) | undefined;
  let finished = false;
  const done = run((c) => { chunks.push(c); wake?.(); }).finally(() => { finished = true; wake?.(); });
  done.catch(() => {}); // rethrown below, after the chunks that came first
  let consumerLeft = true;
  try {
    for (;;) {
      if (chunks.length) { yield chunks.splice(0).join(''); continue; }
      if (finished) break;
      await new Promise<void>((res) => (wake = res));
      wake = undefined;
    }
    await done;
    consumerLeft = false;
  } finally {
    if (consumerLeft && !finished) stop();
  }
}
