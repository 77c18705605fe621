// A charloom ONNX model in the browser, run by onnxruntime-web: what the exported page needs besides its DOM.
//
// The model file stands alone: its metadata (the `charloom` entry, JSON) holds the vocabulary, the records flag,
// the model config and the sampling defaults. onnxruntime-web has no call that reads a model's metadata, so it
// is read here from the file's protobuf bytes, and the session is made from the same bytes.
//
// Choosing characters follows charloom's decoding.py step for step, in float32 where it computes in float32,
// with the same per-sample Mersenne Twister streams, so a seed gives the text `charloom sample` writes from the
// same file. Two things can still part them, both rare: onnxruntime-web's WebAssembly kernels and the native
// ones round differently (logits agree to a few float32 ulps, not bit for bit), and NumPy's vectorised float32
// exp is off by up to two ulps where Math.exp rounded to float32 is not. A character differs only when the
// uniform draw falls within such a rounding of a boundary between two characters; after that the texts part.

export const METADATA_KEY = "charloom";
const FORMAT = "charloom-onnx";
const VERSION = 1;
const GREEDY_BELOW = 1e-30; // a smaller temperature is greedy, as in decoding.py
const MAX_SEED = 2n ** 62n;
const TURN_MS = 12; // the longest the generation loop keeps the page from drawing and reading input
const START_PIECE = 1024; // characters of start text one call reads, without an attention head (with one: its memory)

// ---- the model file's metadata, from its protobuf bytes -------------------------------------------------------
function varint(buf, pos) {
  let value = 0, scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new Error("the file ends inside a number");
    const b = buf[pos++];
    value += (b & 0x7f) * scale; // exact up to 2**53: far beyond any length or field number here
    if (!(b & 0x80)) return [value, pos];
    scale *= 128;
  }
  throw new Error("a number longer than ten bytes");
}

// The fields of one protobuf message in buf[pos:end]: {field, wire, value} for numbers, {field, wire, start, end}
// for length-delimited fields (strings, bytes, nested messages); fixed-width fields are skipped.
function* fields(buf, pos, end) {
  while (pos < end) {
    let key, n;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8), wire = key % 8;
    if (wire === 0) {
      [n, pos] = varint(buf, pos);
      yield { field, wire, value: n };
    } else if (wire === 2) {
      [n, pos] = varint(buf, pos);
      if (pos + n > end) throw new Error(`field ${field} runs past the end of its message`);
      yield { field, wire, start: pos, end: pos + n };
      pos += n;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new Error(`field ${field} has wire type ${wire}, which ONNX files do not use`);
    }
  }
  if (pos > end) throw new Error("the last field runs past the end of its message");
}

// onnx.proto: ModelProto.metadata_props, a repeated StringStringEntryProto {key = 1, value = 2}
const MODEL_METADATA_PROPS = 14;

// The ONNX file's metadata_props as a Map (key -> value), read from the top level of the ModelProto only.
export function metadataProps(bytes) {
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const props = new Map();
  for (const f of fields(bytes, 0, bytes.length)) {
    if (f.field !== MODEL_METADATA_PROPS || f.wire !== 2) continue;
    let key = "", value = "";
    for (const g of fields(bytes, f.start, f.end)) {
      if (g.wire !== 2) continue;
      if (g.field === 1) key = utf8.decode(bytes.subarray(g.start, g.end));
      else if (g.field === 2) value = utf8.decode(bytes.subarray(g.start, g.end));
    }
    props.set(key, value);
  }
  return props;
}

// The `charloom` metadata of an exported file, checked as onnx_generator.py checks it.
export function readMetadata(bytes, where = "model.onnx") {
  let props;
  try {
    props = metadataProps(bytes);
  } catch (e) {
    throw new Error(`${where}: not an ONNX file (${e.message})`);
  }
  const raw = props.get(METADATA_KEY);
  if (raw === undefined) {
    throw new Error(`${where}: not a charloom model (no '${METADATA_KEY}' metadata; export one with ` +
                    "`charloom export`)");
  }
  let meta;
  try {
    meta = JSON.parse(raw);
  } catch (e) {
    throw new Error(`${where}: damaged charloom metadata (${e.name})`);
  }
  if (!meta || typeof meta !== "object" || meta.format !== FORMAT) {
    throw new Error(`${where}: not a charloom model (metadata format ${JSON.stringify(meta && meta.format)})`);
  }
  if (meta.version !== VERSION) {
    throw new Error(`${where}: charloom ONNX version ${meta.version} is not supported by this page (it reads ` +
                    `version ${VERSION})`);
  }
  const m = meta.model, v = meta.vocab;
  const damaged = (what) => new Error(`${where}: damaged charloom metadata (${what})`);
  if (!m || !v || !Array.isArray(meta.itos) || !meta.ids || !Array.isArray(meta.state)) {
    throw damaged("a field is missing");
  }
  if (typeof meta.records !== "boolean") throw damaged("records is not true or false");
  const recent = meta.state.includes("recent");
  if (recent !== (Number.isInteger(m.grams) && m.grams >= 2)) throw damaged("state and grams disagree");
  const memory = meta.state.includes("memory");
  if (memory !== (Number.isInteger(m.attention) && m.attention >= 1 && Number.isInteger(m.memory) && m.memory >= 1)) {
    throw damaged("state and attention disagree");
  }
  if (meta.itos.length !== m.vocab_size) {
    throw new Error(`${where}: model reads ${m.vocab_size} ids but the vocabulary has ${meta.itos.length}`);
  }
  for (const name of ["pad", "bos", "eos", "unk"]) {
    if (!Number.isInteger(meta.ids[name]) || meta.ids[name] < 0 || meta.ids[name] >= meta.itos.length) {
      throw damaged(`the ${name} id`);
    }
  }
  return meta;
}

// ---- the model ----------------------------------------------------------------------------------------------
// A session over an exported file with the metadata that describes it. Its graph: ids (B, T) int64 and the
// state tensors in, logits (B, T, V) float32 and the new state out; each state tensor is (first, B, last): the
// cell's (num_layers, B, H), with hashed context inputs `recent` (1, B, grams - 1), and with an attention head
// `memory` (memory, B, 2 * attention + 1) (config.state_shapes).
export class Model {
  constructor(ort, session, meta) {
    this.ort = ort;
    this.session = session;
    this.meta = meta;
    this.vocabSize = meta.model.vocab_size;
    this.layers = meta.model.num_layers;
    this.hidden = meta.model.hidden_size;
    this.names = meta.state;
    const grams = meta.model.grams || 0;
    const recall = [meta.model.memory, 2 * meta.model.attention + 1];  // with an attention head: its memory
    this.shapes = this.names.map((name) => (name === "recent" ? [1, grams - 1]
                                            : name === "memory" ? recall : [this.layers, this.hidden]));
    this.specials = (meta.vocab.specials || ["<pad>", "<bos>", "<eos>", "<unk>"]).length;
    this.stoi = new Map(meta.itos.slice(this.specials).map((ch, k) => [ch, k + this.specials]));
    const ids = meta.ids;
    // a labelled records model: one `<label:NAME>` token per label, read after <bos>, never written
    this.labels = new Map((meta.vocab.labels || []).map((name) => [name, meta.itos.indexOf(`<label:${name}>`)]));
    for (const [name, id] of this.labels) {
      if (id < 0) throw new Error(`damaged charloom metadata (no token for label ${JSON.stringify(name)})`);
      this.stoi.delete(`<label:${name}>`);
    }
    this.banned = [ids.pad, ids.bos, ids.unk, ...this.labels.values(), ...(meta.records ? [] : [ids.eos])];
  }

  // The token of a label, its spaces around it aside, or an error listing the labels the model knows
  // (Vocab.label_id: in a model from before labels lost their spaces, the label that has them).
  labelId(label) {
    if (this.labels.has(label)) return this.labels.get(label);
    const known = [...this.labels.keys()];
    const bare = typeof label === "string" ? label.trim() : label;
    const match = known.find(k => k === bare) ?? known.find(k => k !== k.trim() && k.trim() === bare);
    if (match !== undefined) return this.labels.get(match);
    throw new Error(known.length ? `label: ${JSON.stringify(label)} is not one of ${known.join(", ")}`
                                 : "label: this model was trained without labels");
  }

  // The summary the page shows: cell, layers, width, attention, the head's hidden layer, vocabulary, records or not.
  summary() {
    const m = this.meta.model, info = this.meta.info || {};
    const bpc = typeof info.val_bpc === "number" ? `, validation ${info.val_bpc.toFixed(3)} bpc` : "";
    const keys = m.shifted_keys ? " (shifted keys)" : "";  // absent from files from before them
    const head = (m.attention ? `, attention ${m.attention}${keys} over ${m.memory} characters` : "") +
      (m.head_hidden ? `, head layer ${m.head_hidden < 0 ? m.hidden_size : m.head_hidden}` : "");
    return `${m.cell} ${m.num_layers}x${m.hidden_size}${head}, vocabulary ${this.vocabSize} ids ` +
      `(${this.vocabSize - this.specials} characters)${bpc}, ` +
      (this.meta.records ? "records model" : "continuous text");
  }

  // The text as the vocabulary reads it: Unicode-normalised, then lower-cased, as configured.
  prepare(text) {
    const v = this.meta.vocab;
    if (v.normalize && v.normalize !== "none") text = text.normalize(v.normalize);
    return v.lower ? text.toLowerCase() : text;
  }

  // Characters of `start` the model has never seen (read as <unk>, or refused, by the vocabulary's policy).
  unknownCharacters(start) {
    return [...new Set([...this.prepare(start)].filter((ch) => !this.stoi.has(ch)))].sort();
  }

  // The ids a generation starts from: the start text, after <bos> for a records model, after a newline (or
  // <bos>) when there is no start text; decoding.Writer._prefix.
  prefix(start, label = null) {
    checkText("start", start);
    const head = label === null ? [] : [this.labelId(label)];
    const ids = [];
    let at = 0;
    for (const ch of this.prepare(start)) {
      const id = this.stoi.get(ch);
      if (id === undefined && this.meta.vocab.unknown === "error") {
        const code = ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
        throw new Error(`start text: character ${JSON.stringify(ch)} (U+${code}) at position ${at} is not in ` +
                        "the vocabulary");
      }
      ids.push(id === undefined ? this.meta.ids.unk : id);
      at++;
    }
    if (this.meta.records || !start) {
      ids.unshift(this.meta.records || !this.stoi.has("\n") ? this.meta.ids.bos : this.stoi.get("\n"), ...head);
    }
    return ids;
  }

  // One call of the graph: ids (B, T) -> logits (B, T, V) as a Float32Array, and the new state tensors.
  async forward(ids, batch, time, state) {
    const { ort } = this;
    const feeds = { ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [batch, time]) };
    const zeros = ([first, last]) => new ort.Tensor("float32", new Float32Array(first * batch * last),
                                                    [first, batch, last]);
    this.names.forEach((name, k) => { feeds[name] = state ? state[k] : zeros(this.shapes[k]); });
    const out = await this.session.run(feeds);
    return { logits: out.logits.data, state: this.names.map((name) => out[`${name}_out`]) };
  }

  // The start text read a piece at a time, the state carried (an attention head's scores over one call grow with
  // its length squared: a pasted book would not fit in WebAssembly's memory), its last logits and state repeated
  // for n samples: ((n, V), state for n).
  async start(prefix, n) {
    const m = this.meta.model;
    const size = m.attention ? m.memory : START_PIECE;
    let logits = null, state = null, piece = [];
    for (let at = 0; at < prefix.length; at += size) {
      piece = prefix.slice(at, at + size);
      ({ logits, state } = await this.forward(piece, 1, piece.length, state));
    }
    const V = this.vocabSize;
    const last = logits.subarray((piece.length - 1) * V, piece.length * V);
    const rows = new Float32Array(n * V);
    for (let i = 0; i < n; i++) rows.set(last, i * V);
    const repeated = state.map((s, k) => {
      const [L, H] = this.shapes[k];
      const data = new Float32Array(L * n * H); // (L, 1, H) -> (L, n, H)
      for (let l = 0; l < L; l++) {
        const layer = s.data.subarray(l * H, (l + 1) * H);
        for (let i = 0; i < n; i++) data.set(layer, (l * n + i) * H);
      }
      return new this.ort.Tensor("float32", data, [L, n, H]);
    });
    return { logits: rows, state: repeated };
  }

  // One character for each of the n samples: ids (n,) -> ((n, V) logits, new state).
  step(ids, state) {
    return this.forward(ids, ids.length, 1, state);
  }
}

// Fetch the exported file once, read its metadata, and make a WebAssembly session from the same bytes.
export async function loadModel(ort, url = "model.onnx") {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const meta = readMetadata(bytes, url);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const want = ["ids", ...meta.state], got = [...session.inputNames];
  if (want.length !== got.length || want.some((name) => !got.includes(name))) {
    throw new Error(`${url}: graph takes ${got.join(", ")}, not ${want.join(", ")}`);
  }
  return new Model(ort, session, meta);
}

// ---- random numbers: torch's CPU generator, one stream per sample --------------------------------------------
// MT19937 seeded with init_genrand, as torch.Generator().manual_seed and NumPy's legacy seeding do.
export class MT19937 {
  constructor(seed) {
    const mt = new Uint32Array(624);
    mt[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.mt = mt;
    this.index = 624;
  }

  nextUint32() {
    const mt = this.mt;
    if (this.index >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  // A float32 uniform in [0, 1): the low 24 bits of a draw, scaled (torch.rand's, exactly).
  uniform() {
    return (this.nextUint32() & 0xffffff) * 2 ** -24;
  }
}

// Sample i of a generation with seed s draws from the stream seeded with (s + i) mod 2**32.
export function sampleStream(seed, i) {
  return new MT19937(Number((BigInt(seed) + BigInt(i)) & 0xffffffffn));
}

export function randomSeed() {
  const [hi, lo] = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo); // 62 random bits, as secrets.randbits(62)
}

// ---- choosing a character: decoding.py's choose_checked for one row, in float32 ----------------------------------
const f32 = Math.fround;

// NumPy's float32 sum over a contiguous row: pairwise, eight accumulators per block of up to 128.
function pairwiseSum(a, off, n) {
  if (n < 8) {
    let r = 0;
    for (let i = 0; i < n; i++) r = f32(r + a[off + i]);
    return r;
  }
  if (n <= 128) {
    let r0 = a[off], r1 = a[off + 1], r2 = a[off + 2], r3 = a[off + 3];
    let r4 = a[off + 4], r5 = a[off + 5], r6 = a[off + 6], r7 = a[off + 7];
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      const p = off + i;
      r0 = f32(r0 + a[p]); r1 = f32(r1 + a[p + 1]); r2 = f32(r2 + a[p + 2]); r3 = f32(r3 + a[p + 3]);
      r4 = f32(r4 + a[p + 4]); r5 = f32(r5 + a[p + 5]); r6 = f32(r6 + a[p + 6]); r7 = f32(r7 + a[p + 7]);
    }
    let res = f32(f32(f32(r0 + r1) + f32(r2 + r3)) + f32(f32(r4 + r5) + f32(r6 + r7)));
    for (; i < n; i++) res = f32(res + a[off + i]);
    return res;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return f32(pairwiseSum(a, off, half) + pairwiseSum(a, off + half, n - half));
}

// Softmax of a float32 row, as decoding.softmax computes it: exp(x - max), divided by the pairwise sum.
function softmax(x) {
  let top = -Infinity;
  for (let j = 0; j < x.length; j++) if (x[j] > top) top = x[j];
  const e = new Float32Array(x.length); // every store rounds to float32
  for (let j = 0; j < x.length; j++) e[j] = Math.exp(f32(x[j] - top));
  const total = pairwiseSum(e, 0, e.length);
  for (let j = 0; j < e.length; j++) e[j] = e[j] / total;
  return e;
}

// Ids from the largest value to the smallest, ties in id order (NumPy's stable argsort of -x).
function descending(x) {
  const order = Array.from(x, (_, j) => j);
  return order.sort((a, b) => (x[a] > x[b] ? -1 : x[a] < x[b] ? 1 : a - b));
}

function keepTopK(x, k) {
  const order = descending(x);
  for (let r = k; r < order.length; r++) x[order[r]] = -Infinity;
}

// Keep the smallest set of ids whose probability reaches p: drop an id when the mass of the strictly more
// likely ones already reaches p.
function keepNucleus(x, p) {
  const order = descending(x);
  const probs = softmax(Float32Array.from(order, (j) => x[j]));
  const reach = f32(p);
  let mass = 0;
  const drop = [];
  for (let r = 0; r < order.length; r++) {
    mass = f32(mass + probs[r]);
    if (r > 0 && f32(mass - probs[r]) >= reach) drop.push(order[r]);  // the most likely always stays
  }
  for (const j of drop) x[j] = -Infinity;
}

function argmax(x) {
  let best = 0;
  for (let j = 1; j < x.length; j++) if (x[j] > x[best]) best = j;
  return best;
}

// The next id from one row of float32 scores (V,): greedy below GREEDY_BELOW, else temperature, top-k, top-p,
// then the first id whose cumulative probability exceeds u times the total. A pure function.
export function choose(scores, temperature, topK, topP, u) {
  if (temperature < GREEDY_BELOW) return argmax(scores);
  const V = scores.length;
  const x = new Float32Array(V);
  const t = f32(temperature);
  for (let j = 0; j < V; j++) x[j] = scores[j] / t;
  if (topK && topK < V) keepTopK(x, topK);
  if (topP < 1) keepNucleus(x, topP);
  const probs = softmax(x);
  const cdf = new Float32Array(V);
  let mass = 0;
  for (let j = 0; j < V; j++) cdf[j] = mass = f32(mass + probs[j]);
  const threshold = f32(u * cdf[V - 1]);
  let idx = 0;
  for (let j = 0; j < V; j++) if (cdf[j] <= threshold) idx++;
  return Math.min(idx, V - 1);
}

// Make already used characters less likely (decoding.apply_repetition_penalty) for one row, in place.
function penalise(scores, seen, off, penalty) {
  const p = f32(penalty);
  for (let j = 0; j < scores.length; j++) {
    if (seen[off + j]) scores[j] = scores[j] > 0 ? scores[j] / p : scores[j] * p;
  }
}

// ---- options and the generation loop ----------------------------------------------------------------------------
function checkText(name, text) {
  if (typeof text !== "string") throw new Error(`${name}: must be text`);
  for (let i = 0, at = 0; i < text.length; at++) {
    const code = text.codePointAt(i);
    if (code >= 0xd800 && code <= 0xdfff) {
      const hex = code.toString(16).toUpperCase();
      throw new Error(`${name}: U+${hex} at position ${at} is a lone surrogate, not a character`);
    }
    i += code > 0xffff ? 2 : 1;
  }
}

// The options a generation means, defaults from the model file, checked by SampleOptions' rules.
export function sampleOptions(options = {}, defaults = {}) {
  const o = { start: "", length: 500, n: 1, temperature: 0.8, top_k: 0, top_p: 1.0, repetition_penalty: 1.0,
              seed: null, label: null };
  for (const key of Object.keys(o)) {
    if (defaults[key] !== undefined && defaults[key] !== null) o[key] = defaults[key];
    if (options[key] !== undefined && options[key] !== null && options[key] !== "") o[key] = options[key];
  }
  checkText("start", o.start);
  const integer = (name, low) => {
    o[name] = Number(o[name]);
    if (!Number.isInteger(o[name]) || o[name] < low) {
      throw new Error(`${name}: must be an integer >= ${low}, got ${o[name]}`);
    }
  };
  integer("length", 0);
  integer("n", 1);
  integer("top_k", 0);
  for (const name of ["temperature", "top_p", "repetition_penalty"]) o[name] = Number(o[name]);
  if (!(o.temperature >= 0 && o.temperature <= 10)) {
    throw new Error(`temperature: must be in [0, 10] (0 = greedy), got ${o.temperature}`);
  }
  if (!(o.top_p > 0 && o.top_p <= 1)) throw new Error(`top_p: must be in (0, 1], got ${o.top_p}`);
  if (!(o.repetition_penalty >= 1 && o.repetition_penalty <= 10)) {
    throw new Error(`repetition_penalty: must be in [1, 10] (1 = off), got ${o.repetition_penalty}`);
  }
  if (o.seed !== null) {
    let seed;
    try {
      seed = BigInt(typeof o.seed === "string" ? o.seed.trim() : o.seed);
    } catch {
      throw new Error(`seed: must be a whole number, got ${o.seed}`);
    }
    if (seed < 0n || seed >= MAX_SEED) throw new Error(`seed: must be in [0, 2**62), got ${seed}`);
    o.seed = seed;
  }
  return o;
}

// Let the browser draw and read input (a task, not a microtask: awaiting a settled promise does neither). One
// channel serves every turn: a port pair is costly to make, and a chain of timeouts is clamped to 4 ms each.
let channel = null;
const waiting = [];
function nextTask() {
  if (channel === null) {
    channel = new MessageChannel();
    channel.port1.onmessage = () => waiting.shift()();
    if (channel.port1.unref) channel.port1.unref(); // Node: an idle port keeps no process alive
  }
  return new Promise((resolve) => {
    waiting.push(resolve);
    channel.port2.postMessage(null);
  });
}

// Yield [sample index, text] pieces as they are made; joined per sample they are the samples' texts
// (decoding.Writer._run). options: start, length, n, temperature, top_k, top_p, repetition_penalty, label, seed (a
// number, a BigInt or a string of digits; none: a random one, told through `options.onSeed`), and `signal`
// (an AbortSignal) to stop between characters.
export async function* stream(model, options = {}) {
  const o = sampleOptions(options, model.meta.sampling || {});
  const prefix = model.prefix(o.start, o.label);
  const seed = o.seed === null ? randomSeed() : o.seed;
  if (options.onSeed) options.onSeed(seed);
  if (o.length === 0) return;
  const n = o.n, penalty = o.repetition_penalty;
  const V = model.vocabSize, eos = model.meta.ids.eos, itos = model.meta.itos;
  let { logits, state } = await model.start(prefix, n); // (n, V): every sample shares the start
  const streams = o.temperature > 0 ? Array.from({ length: n }, (_, i) => sampleStream(seed, i)) : null;
  const seen = penalty !== 1 ? new Uint8Array(n * V) : null;
  if (seen) for (let i = 0; i < n; i++) for (const id of prefix) seen[i * V + id] = 1;
  const done = new Uint8Array(n);
  let left = n, turn = performance.now();
  const scores = new Float32Array(V), next = new Array(n);
  for (let t = 0; t < o.length; t++) {
    for (let i = 0; i < n; i++) {
      scores.set(logits.subarray(i * V, (i + 1) * V));
      for (const id of model.banned) scores[id] = -Infinity;
      if (seen) penalise(scores, seen, i * V, penalty);
      const u = streams ? streams[i].uniform() : 0; // one draw per sample and character, done or not
      next[i] = choose(scores, o.temperature, o.top_k, o.top_p, u);
    }
    for (let i = 0; i < n; i++) {
      if (done[i]) continue;
      if (next[i] === eos) {
        done[i] = 1;
        left--;
      } else if (next[i] >= model.specials) {
        yield [i, itos[next[i]]];
      }
    }
    if (left === 0) break;
    if (seen) for (let i = 0; i < n; i++) seen[i * V + next[i]] = 1;
    if (options.signal && options.signal.aborted) return;
    ({ logits, state } = await model.step(next, state));
    if (performance.now() - turn > TURN_MS) {
      await nextTask();
      turn = performance.now();
      if (options.signal && options.signal.aborted) return;
    }
  }
}

// The n texts of a generation, joined (decoding.Writer.generate).
export async function generate(model, options = {}) {
  const o = sampleOptions(options, model.meta.sampling || {});
  const texts = Array.from({ length: o.n }, () => []);
  for await (const [i, piece] of stream(model, options)) texts[i].push(piece);
  return texts.map((pieces) => pieces.join(""));
}
