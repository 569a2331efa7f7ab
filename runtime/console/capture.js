// The talk page's microphone tap: an AudioWorklet that hands each 128-sample block of the
// (16 kHz) capture context to the page, which encodes 60 ms frames with WebCodecs.
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor('capture', Capture);
