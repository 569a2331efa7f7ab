//! # xiaozhi-e2e
//!
//! The harness of the end-to-end tests: the device simulator talks to a real `xiaozhi-server`
//! whose providers point at [`mock::MockOpenAi`], an OpenAI-compatible HTTP server that speaks the
//! real protocol (multipart transcription uploads, SSE chat streams with tool calls, WAV speech
//! synthesized by `espeak-ng`). [`speech`] makes real spoken audio for the simulated microphone.
//! [`vendors`] holds the protocol peers of the vendors' speech and chat APIs and [`providers`]
//! the turn their tests share.

pub mod browser;
pub mod harness;
pub mod jpeg;
pub mod mock;
pub mod mosquitto;
pub mod providers;
pub mod python;
pub mod raw;
pub mod speech;
pub mod vendors;
