// Float audio at the device rate → 16-bit little-endian PCM ("linear16") at the
// model's rate, in fixed-size chunks.  Shared by the AudioWorklet (pcm-worklet.js)
// and the ScriptProcessor fallback (app.js), so both send identical bytes.

export class Pcm16Downsampler {
  /**
   * @param {number} inRate   the AudioContext's rate (44100, 48000, ...)
   * @param {number} outRate  what the endpoint was told (sample_rate=16000)
   * @param {number} chunkMs  audio per binary frame; 50 ms keeps interim
   *                          results prompt without one frame per 128 samples
   */
  constructor(inRate, outRate = 16000, chunkMs = 50) {
    // Input samples per output sample; each output is the mean of its window (a
    // box filter), which keeps most aliasing out of the speech band without a
    // full FIR.  A ratio below 1 (a device slower than the target) holds samples.
    this.ratio = inRate / outRate;
    this.pending = this.ratio;
    this.sum = 0;
    this.count = 0;
    this.last = 0;
    this.chunkSamples = Math.max(1, Math.round((outRate * chunkMs) / 1000));
    this._newChunk();
  }

  _newChunk() {
    this.buffer = new ArrayBuffer(this.chunkSamples * 2);
    this.view = new DataView(this.buffer);
    this.filled = 0;
  }

  _emit(value, out) {
    const s = Math.max(-1, Math.min(1, value));
    // Explicitly little-endian: linear16 is LE whatever the CPU is.
    this.view.setInt16(this.filled * 2, Math.round(s < 0 ? s * 0x8000 : s * 0x7fff), true);
    this.filled += 1;
    if (this.filled === this.chunkSamples) {
      out.push(this.buffer);
      this._newChunk();
    }
  }

  /**
   * Feed one block of float samples in [-1, 1].
   * @param {Float32Array} samples
   * @returns {ArrayBuffer[]} the chunks completed by this block (often none)
   */
  push(samples) {
    const out = [];
    for (let i = 0; i < samples.length; i++) {
      this.sum += samples[i];
      this.count += 1;
      this.pending -= 1;
      while (this.pending <= 0) {
        const value = this.count ? this.sum / this.count : this.last;
        this.last = value;
        this._emit(value, out);
        this.sum = 0;
        this.count = 0;
        this.pending += this.ratio;
      }
    }
    return out;
  }

  /** The partly filled last chunk (if any): sent before CloseStream so no speech is lost. */
  flush() {
    if (this.filled === 0) return [];
    const tail = this.buffer.slice(0, this.filled * 2);
    this._newChunk();
    return [tail];
  }
}
