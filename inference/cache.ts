// In-memory result cache bounded by bytes, evicting by frecency. Its keys are the shared steadytext_cache's
// (callKey, inference/cache-key.ts): the engine computes them, the cache only stores what it is given.

export type CachedValue = string | Float32Array;
interface Entry { key: string; value: CachedValue; bytes: number; score: number; at: number; slot: number }
export interface CacheStats { entries: number; bytes: number; maxBytes: number; hits: number; misses: number; evictions: number }

const overhead = 200; // key string, entry object, map slot
const sizeOf = (v: CachedValue) => (typeof v === 'string' ? v.length * 2 : v.byteLength) + overhead;

/** Frecency: an access adds 1 to a score that halves every `halfLifeMs`; eviction drops the lowest of a
 * random sample of entries (O(1), close to exact for any sample of 8+). */
export class ResultCache {
  private map = new Map<string, Entry>();
  private slots: Entry[] = [];
  private used = 0;
  hits = 0; misses = 0; evictions = 0;

  constructor(readonly maxBytes: number, private halfLifeMs = 15 * 60_000) {}

  get enabled() { return this.maxBytes > 0; }

  get(key: string): CachedValue | undefined {
    if (!this.enabled) return undefined;
    const e = this.map.get(key);
    if (!e) { this.misses++; return undefined; }
    this.hits++;
    this.touch(e, performance.now());
    return e.value;
  }

  /** Whether an answer is held under `key` (counts as neither hit nor miss). */
  has(key: string): boolean {
    return this.map.has(key);
  }

  set(key: string, value: CachedValue) {
    const bytes = sizeOf(value);
    if (!this.enabled || bytes > this.maxBytes / 4) return; // one huge answer must not flush the cache
    const old = this.map.get(key);
    if (old) { this.used += bytes - old.bytes; old.value = value; old.bytes = bytes; }
    else {
      const e: Entry = { key, value, bytes, score: 0, at: performance.now(), slot: this.slots.length };
      this.touch(e, e.at);
      this.map.set(key, e);
      this.slots.push(e);
      this.used += bytes;
    }
    while (this.used > this.maxBytes && this.slots.length) this.evictOne();
  }

  clear() { this.map.clear(); this.slots = []; this.used = 0; }

  stats(): CacheStats {
    return { entries: this.map.size, bytes: this.used, maxBytes: this.maxBytes, hits: this.hits, misses: this.misses, evictions: this.evictions };
  }

  private touch(e: Entry, now: number) {
    e.score = e.score * 2 ** (-(now - e.at) / this.halfLifeMs) + 1;
    e.at = now;
  }

  private evictOne() {
    const now = performance.now(), n = this.slots.length;
    const rank = (e: Entry) => Math.log2(e.score) - (now - e.at) / this.halfLifeMs;
    const pick = n <= 16 ? (i: number) => this.slots[i] : () => this.slots[(Math.random() * n) | 0];
    let victim = pick(0);
    for (let i = 1; i < Math.min(n, 16); i++) { const e = pick(i); if (rank(e) < rank(victim)) victim = e; }
    const last = this.slots.pop()!;
    if (last !== victim) { last.slot = victim.slot; this.slots[victim.slot] = last; }
    this.map.delete(victim.key);
    this.used -= victim.bytes;
    this.evictions++;
  }
}
