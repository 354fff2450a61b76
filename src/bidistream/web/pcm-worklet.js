// The microphone capture that runs on the audio thread: converts each 128-sample
// render quantum and posts finished linear16 chunks to the page, which sends them
// as binary WebSocket frames.  Doing it here, not on the main thread, keeps audio
// flowing while the page is busy drawing transcripts.
import { Pcm16Downsampler } from "./pcm.js";

class Linear16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkMs } = options.processorOptions;
    // `sampleRate` is the AudioWorkletGlobalScope's: the context's real rate.
    this.pcm = new Pcm16Downsampler(sampleRate, targetRate, chunkMs);
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        for (const chunk of this.pcm.flush()) this.port.postMessage(chunk, [chunk]);
        this.port.postMessage("flushed");
        this.running = false;
      }
    };
  }

  process(inputs) {
    // The node is created with channelCount 1 / "explicit", so input 0 is already mono.
    const channel = inputs[0] && inputs[0][0];
    if (channel && this.running) {
      for (const chunk of this.pcm.push(channel)) this.port.postMessage(chunk, [chunk]);
    }
    return this.running;
  }
}

registerProcessor("linear16-capture", Linear16Capture);
