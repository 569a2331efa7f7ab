//! # xiaozhi-e2e
//!
//! The harness of the end-to-end tests: the device simulator talks to a real `xiaozhi-server`
//! whose providers point at [`mock::MockOpenAi`], an OpenAI-compatible HTTP server that speaks the
//! real protocol (multipart transcription uploads, SSE chat streams with tool calls, WAV speech
//! synthesized by `espeak-ng`). [`speech`] makes real spoken audio for the simulated microphone.

pub mod harness;
pub mod mock;
pub mod raw;
pub mod speech;
