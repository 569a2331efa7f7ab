// The talk page: a browser tab acting as a device over the firmware's WebSocket protocol
// (docs: device-protocol.md). The console's API (POST api/talk) says where to connect and as
// which device; the microphone is captured at 16 kHz, encoded to Opus in 60 ms frames with
// WebCodecs' AudioEncoder and sent as binary frames (protocol version 1); the server's Opus is
// decoded with AudioDecoder and played in order. Every JSON message is shown as it passes.
'use strict';

const FRAME_SAMPLES = 960; // 60 ms at 16 kHz
const $ = (id) => document.getElementById(id);

let csrf = null;
let ws = null;
let sessionId = '';
let talking = false;     // the user asked to talk (auto mode)
let speaking = false;    // the server is sending its reply (between tts start and stop)
let capture = null;      // { context, stream, node, encoder }
let decoder = null;
let player = null;       // the AudioContext replies play in
let playAt = 0;
let pending = new Float32Array(0);
let captured = 0;        // samples captured so far (the encoder's timestamps)
let received = 0;        // µs of reply decoded
let played = 0;          // µs of reply played to the end
let sentFrames = 0;
let decodedPackets = 0;

function notice(text, isError) {
  $('notice').textContent = text;
  $('notice').className = isError ? 'error' : '';
  $('notice').hidden = !text;
}

function log(direction, text) {
  const line = document.createElement('div');
  line.className = direction;
  line.textContent = (direction === 'in' ? '← ' : '→ ') + text;
  $('log').append(line);
  $('log').scrollTop = $('log').scrollHeight;
}

function say(who, text) {
  const line = document.createElement('p');
  const name = document.createElement('span');
  name.className = 'role-' + who;
  name.textContent = who === 'user' ? 'You: ' : 'Assistant: ';
  line.append(name, text);
  line.dataset.role = who;
  $('chat').append(line);
}

function send(message) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const text = JSON.stringify(message);
  ws.send(text);
  log('out', text);
}

function setState(state) {
  $('state').textContent = state;
}

function figures() {
  $('sent-frames').textContent = sentFrames;
  $('received-ms').textContent = Math.round(received / 1000);
  $('played-ms').textContent = Math.round(played / 1000);
}

async function start() {
  if (!window.isSecureContext || !window.AudioEncoder || !window.AudioDecoder) {
    notice('This page needs WebCodecs and the microphone, which browsers give only to https:// pages or http://localhost: open the console through HTTPS or on this machine.', true);
  }
  try {
    const session = await fetch('api/session', { credentials: 'same-origin' });
    if (!session.ok) {
      notice('Sign in at the console first.', true);
      const link = document.createElement('a');
      link.href = './';
      link.textContent = ' Sign in';
      $('notice').append(link);
      return;
    }
    csrf = (await session.json()).csrf;
    const { agents } = await (await fetch('api/agents', { credentials: 'same-origin' })).json();
    for (const agent of agents) {
      const option = document.createElement('option');
      option.value = agent.id;
      option.textContent = agent.name ? agent.name + ' (' + agent.id + ')' : agent.id;
      $('agent').append(option);
    }
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) $('agent').value = wanted;
  } catch (e) {
    notice(e.message, true);
  }
}

async function connect() {
  notice('');
  $('connect').disabled = true;
  try {
    player = player || new AudioContext();
    await player.resume();
    const response = await fetch('api/talk', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ agent: $('agent').value || null }),
    });
    const talk = await response.json();
    if (!response.ok) throw new Error(talk.message || 'the server refused');
    const url = new URL(talk.url);
    url.searchParams.set('device-id', talk.device_id);
    url.searchParams.set('client-id', talk.client_id);
    url.searchParams.set('protocol-version', '1');
    if (talk.token) url.searchParams.set('authorization', 'Bearer ' + talk.token);
    log('out', 'connecting to ' + talk.url + ' as ' + talk.device_id);
    ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => send({
      type: 'hello', version: 1, transport: 'websocket', features: { mcp: false },
      audio_params: { format: 'opus', sample_rate: 16000, channels: 1, frame_duration: 60 },
    });
    ws.onmessage = (event) => (typeof event.data === 'string' ? onText(event.data) : onAudio(event.data));
    ws.onclose = (event) => {
      log('in', 'closed (' + event.code + (event.reason ? ' ' + event.reason : '') + ')');
      hangUp();
    };
    ws.onerror = () => notice('The WebSocket connection failed.', true);
  } catch (e) {
    notice(e.message, true);
    $('connect').disabled = false;
  }
}

function onText(text) {
  log('in', text);
  let message;
  try { message = JSON.parse(text); } catch (_) { return; }
  if (message.type === 'hello') {
    sessionId = message.session_id || '';
    const params = message.audio_params || {};
    openDecoder(params.sample_rate || 24000);
    setState('connected');
    for (const id of ['talk', 'hangup', 'text', 'send']) $(id).disabled = false;
  } else if (message.type === 'stt') {
    say('user', message.text);
  } else if (message.type === 'tts') {
    if (message.state === 'start') {
      speaking = true;
      setState('speaking');
    } else if (message.state === 'sentence_start') {
      say('assistant', message.text);
    } else if (message.state === 'stop') {
      speaking = false;
      // As the firmware in auto mode: back to listening after the reply.
      if (talking) listen();
      setState(talking ? 'listening' : 'connected');
    }
  } else if (message.type === 'mcp' && message.payload && message.payload.id !== undefined) {
    // This device offers no tools.
    send({ session_id: sessionId, type: 'mcp', payload: { jsonrpc: '2.0', id: message.payload.id, error: { code: -32601, message: 'this device has no tools' } } });
  }
}

function openDecoder(rate) {
  decoder = new AudioDecoder({
    output: (data) => {
      const samples = new Float32Array(data.numberOfFrames);
      data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
      received += data.duration;
      figures();
      const buffer = player.createBuffer(1, samples.length, data.sampleRate);
      buffer.copyToChannel(samples, 0);
      const source = player.createBufferSource();
      source.buffer = buffer;
      source.connect(player.destination);
      playAt = Math.max(playAt, player.currentTime + 0.05);
      source.start(playAt);
      playAt += buffer.duration;
      const duration = data.duration;
      source.onended = () => { played += duration; figures(); };
      data.close();
    },
    error: (e) => notice('Opus decoding failed: ' + e.message, true),
  });
  decoder.configure({ codec: 'opus', sampleRate: rate, numberOfChannels: 1 });
}

function onAudio(bytes) {
  if (!decoder || decoder.state !== 'configured') return;
  decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: decodedPackets++ * 60000, data: bytes }));
}

function listen() {
  send({ session_id: sessionId, type: 'listen', state: 'start', mode: 'auto' });
}

async function openMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const context = new AudioContext({ sampleRate: 16000 });
  await context.audioWorklet.addModule('capture.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'capture');
  const silent = context.createGain();
  silent.gain.value = 0;
  source.connect(node).connect(silent).connect(context.destination);
  const encoder = new AudioEncoder({
    output: (chunk) => {
      // Only while listening: the firmware does not send while it plays the reply.
      if (!talking || speaking || !ws || ws.readyState !== WebSocket.OPEN) return;
      const packet = new Uint8Array(chunk.byteLength);
      chunk.copyTo(packet);
      ws.send(packet);
      sentFrames++;
      figures();
    },
    error: (e) => notice('Opus encoding failed: ' + e.message, true),
  });
  encoder.configure({ codec: 'opus', sampleRate: 16000, numberOfChannels: 1, bitrate: 32000, opus: { frameDuration: 60000 } });
  node.port.onmessage = (event) => {
    const joined = new Float32Array(pending.length + event.data.length);
    joined.set(pending);
    joined.set(event.data, pending.length);
    pending = joined;
    while (pending.length >= FRAME_SAMPLES && encoder.state === 'configured') {
      const frame = pending.slice(0, FRAME_SAMPLES);
      pending = pending.slice(FRAME_SAMPLES);
      const data = new AudioData({
        format: 'f32-planar', sampleRate: 16000, numberOfChannels: 1, numberOfFrames: FRAME_SAMPLES,
        timestamp: Math.round(captured * 1e6 / 16000), data: frame,
      });
      captured += FRAME_SAMPLES;
      encoder.encode(data);
      data.close();
    }
  };
  return { context, stream, node, encoder };
}

async function toggleTalk() {
  if (talking) {
    talking = false;
    send({ session_id: sessionId, type: 'listen', state: 'stop' });
    $('talk').textContent = 'Start talking';
    setState('connected');
    return;
  }
  try {
    capture = capture || await openMicrophone();
    talking = true;
    listen();
    $('talk').textContent = 'Stop talking';
    setState('listening');
  } catch (e) {
    notice('The microphone cannot be used: ' + e.message, true);
  }
}

function sendText(event) {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  send({ session_id: sessionId, type: 'listen', state: 'detect', text });
  $('text').value = '';
}

function hangUp() {
  talking = false;
  speaking = false;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  ws = null;
  if (capture) {
    capture.stream.getTracks().forEach((track) => track.stop());
    capture.context.close();
    if (capture.encoder.state !== 'closed') capture.encoder.close();
    capture = null;
  }
  if (decoder && decoder.state !== 'closed') decoder.close();
  decoder = null;
  pending = new Float32Array(0);
  for (const id of ['talk', 'hangup', 'text', 'send']) $(id).disabled = true;
  $('talk').textContent = 'Start talking';
  $('connect').disabled = false;
  setState('idle');
}

$('connect').addEventListener('click', connect);
$('talk').addEventListener('click', toggleTalk);
$('hangup').addEventListener('click', hangUp);
$('typed').addEventListener('submit', sendText);
start();
