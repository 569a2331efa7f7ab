//! One conversational reply, once the session has recognised the utterance (its recognition ran
//! while the user spoke) and its rules have shown the text (`stt`) and decided it is not an exit
//! command: [`run`]: memory and intent (extensions, when configured) → LLM stream (with tool-call
//! rounds) → sentences → TTS, streamed → the session's [`Speaker`], which says `tts start` and,
//! when the device has played it all, `tts stop`.
//!
//! With an intent extension selected (`Intent` type other than `function_call`/`nointent`), the
//! extension decides first, given the session's tools: a tool call is run and its effects applied
//! as if the LLM had called it (a result for the LLM then goes to the chat LLM, which is offered
//! no tools, as in the Python server's `intent_llm` mode), a reply is spoken, an exit lets the
//! chat LLM answer the farewell and then closes, and anything else (or a failure) goes to plain
//! chat.
//!
//! A tool's outcome is a list of effects ([`crate::extensions::Effect`]) applied in order by
//! [`apply`]: speech and audio (a `play` effect, opened by [`crate::media`]) queue up for the
//! voice side in the order given, a new system prompt and the end of the conversation are noted
//! for the session. No tool is known here by name.
//!
//! A turn runs as its own task and never touches the socket directly: JSON goes through the
//! session's [`Outbox`], audio and the speaking state through the [`Speaker`]. What a turn takes
//! in is bounded: a tool's result is cut at `limits.tool_result_chars`, and no sentence is longer
//! than `limits.sentence_chars`. Cancelling the turn's token (abort,
//! barge-in, disconnect) drops every provider future at once, which cancels their HTTP requests;
//! (A TTS that takes text as it is written, [`crate::tts::Tts::streams_text`], is handed each
//! sentence from its first words on and synthesizes while the LLM still writes it.)
//! the speaker stops within one frame. Provider failures never end the session: the device hears
//! `system_error_response` and the next turn works as usual.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audio::AudioClip;
use crate::config::{Config, IntentMode};
use crate::connection::{Outbound, Outbox};
use crate::extensions::{
    Effect, ExtensionScope, IntentDecision, Kind, LoadedExtension, ToolDefinition, warn_not_serving,
};
use crate::llm::{ChatMessage, LlmDelta, Role, ToolCall, ToolSpec};
use crate::memory;
use crate::remote::ProviderError;
use crate::services::Services;
use crate::session::state::Reply;
use crate::speaker::{PhraseCache, STREAM_CHUNKS, Source, Speaker};
use crate::text::{self, SentenceSplitter};
use crate::tools::{ToolBox, ToolOutcome};
use crate::tts::AudioChunk;

/// Most LLM calls in one turn (the first answer plus tool-result rounds), as in the Python server.
pub const MAX_LLM_ROUNDS: usize = 5;

/// The lines `context` extensions add to a session's system prompt, asked for once per session
/// (at its start; a turn that begins first waits for them).
pub type ContextLines = Arc<tokio::sync::OnceCell<Arc<[String]>>>;

/// Everything a turn needs, handed over by the session.
pub struct TurnContext {
    /// What is answered.
    pub reply: Reply,
    /// Providers and config of the session.
    pub services: Arc<Services>,
    /// The dialogue so far (without the system prompt).
    pub history: Vec<ChatMessage>,
    /// JSON to the device.
    pub outbox: Outbox,
    /// Audio and the speaking state (`tts`) to the device.
    pub speaker: Speaker,
    /// Tools the LLM may call.
    pub tools: ToolBox,
    /// The extensions serving when the turn started (intent and memory), if the server has any.
    pub extensions: Option<ExtensionScope>,
    /// The session's own system prompt (set by a tool's effect); `None`: the configured prompt.
    pub prompt: Option<String>,
    /// The session's lines from `context` extensions.
    pub context: ContextLines,
    /// Fires on abort, barge-in or disconnect.
    pub cancel: CancellationToken,
    /// When the turn started (the utterance was complete or the text arrived).
    pub started: std::time::Instant,
}

/// How a turn ended.
#[derive(Debug, Default)]
pub struct TurnOutcome {
    /// Messages to append to the dialogue (user, assistant, tool), also when cancelled midway.
    pub messages: Vec<ChatMessage>,
    /// The session should close (exit command, goodbye).
    pub close: bool,
    /// A new system prompt for the session's next turns (a tool's `set-system-prompt`).
    pub prompt: Option<String>,
}

/// Asks every serving `context` extension (in id order) for its lines for the session; a failing
/// one adds nothing.
pub async fn context_lines(scope: &ExtensionScope) -> Arc<[String]> {
    let mut lines = Vec::new();
    for ext in scope.snapshot.of_kind(Kind::Context) {
        match scope.host.context_lines(ext, scope.context.clone()).await {
            Ok(more) => lines.extend(more),
            Err(err) => tracing::warn!("no prompt lines from {}: {err}", ext.id()),
        }
    }
    lines.into()
}

/// Runs one reply until all of it is queued for the speaker, or until its token is cancelled.
/// The dialogue it returns is known before the device hears the reply's end: the caller records
/// it, then waits for the speech with [`finish`], so a device that asks again the moment it gets
/// `tts stop` is answered with this exchange in its history.
pub async fn run(ctx: &TurnContext) -> TurnOutcome {
    let mut outcome = TurnOutcome::default();
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => {}
        _ = run_inner(ctx, &mut outcome) => {}
    }
    outcome
}

/// Waits until the speaker has sent the reply's last frame and `tts stop` (at once when the turn
/// is cancelled).
pub async fn finish(ctx: &TurnContext) {
    ctx.speaker.finish(&ctx.cancel).await;
}

async fn run_inner(ctx: &TurnContext, out: &mut TurnOutcome) {
    let config = &ctx.services.config;
    ctx.speaker.begin(&ctx.cancel).await;
    let (tx, rx) = mpsc::channel::<Sentence>(32);
    let sentences =
        Sentences { tx, max_chars: config.limits.sentence_chars, streams_text: ctx.services.tts.streams_text() };
    let request = match &ctx.reply {
        Reply::Error => {
            let speak = async move { sentences.say(&config.system_error_response, true).await };
            tokio::join!(speak, voice(ctx, rx));
            return;
        }
        Reply::Goodbye => {
            out.close = true;
            config.end_prompt.prompt.clone()
        }
        Reply::Text(text) => text.clone(),
    };
    out.messages.push(ChatMessage::new(Role::User, request));
    let goodbye = matches!(ctx.reply, Reply::Goodbye);
    tokio::join!(respond(ctx, out, sentences, goodbye), voice(ctx, rx));
}

/// The thinking side of a turn whose user message is the last of `out.messages`: memory into
/// the system prompt, the intent step when an intent extension is selected, then [`think`].
async fn respond(ctx: &TurnContext, out: &mut TurnOutcome, sentences: Sentences, goodbye: bool) {
    let config = &ctx.services.config;
    let request = out.messages.last().map(|m| m.content.clone()).unwrap_or_default();
    let mut prompt = system_prompt(config, ctx.prompt.as_deref());
    if let Some(scope) = &ctx.extensions {
        let lines = ctx.context.get_or_init(|| context_lines(scope)).await;
        for line in lines.iter() {
            prompt.push('\n');
            prompt.push_str(line);
        }
    }
    if let Some(scope) = &ctx.extensions
        && let Some(known) = memory::recall(scope, &config.providers.memory, &request).await
    {
        prompt = memory::with_memory(&prompt, &known);
    }
    let system = ChatMessage::new(Role::System, prompt);
    let tools = match &config.providers.intent {
        IntentMode::NoIntent => Vec::new(),
        IntentMode::FunctionCall => ctx.tools.specs().await,
        IntentMode::Extension(id) => match ctx.extensions.as_ref().and_then(|s| s.find(id, Kind::Intent)) {
            Some(ext) => {
                if !goodbye && decide_intent(ctx, out, &sentences, ext, &request).await {
                    return;
                }
                Vec::new()
            }
            None => {
                warn_not_serving("Intent", id, "tools are offered through function calling instead");
                ctx.tools.specs().await
            }
        },
    };
    think(ctx, out, &sentences, &system, &tools).await;
}

/// The intent step: asks the intent extension about `text` and acts on its decision. Returns
/// whether the turn is answered (else the chat LLM answers, seeing any tool result).
async fn decide_intent(
    ctx: &TurnContext,
    out: &mut TurnOutcome,
    sentences: &Sentences,
    ext: &LoadedExtension,
    text: &str,
) -> bool {
    let Some(scope) = &ctx.extensions else { return false };
    let tools: Vec<ToolDefinition> = ctx
        .tools
        .specs()
        .await
        .into_iter()
        .map(|t| ToolDefinition { name: t.name, description: t.description, parameters_json: t.parameters.to_string() })
        .collect();
    let decision = match scope.host.detect_intent(ext, &ctx.history, text, &tools, scope.context.clone()).await {
        Ok(decision) => decision,
        Err(err) => {
            tracing::warn!("intent recognition failed, chatting instead: {err}");
            return false;
        }
    };
    tracing::info!("intent: {decision:?}");
    let timeout = Duration::from_secs(ctx.services.config.tool_call_timeout.max(1));
    let (name, arguments) = match decision {
        IntentDecision::ContinueChat => return false,
        IntentDecision::Reply(reply) => {
            sentences.say(&reply, false).await;
            out.messages.push(ChatMessage::new(Role::Assistant, reply));
            return true;
        }
        // The chat LLM answers the farewell (offered no tools), then the session closes.
        IntentDecision::Exit => {
            out.close = true;
            return false;
        }
        IntentDecision::CallTool { name, arguments_json } => (name, arguments_json),
    };
    let call = ToolCall { id: format!("intent-{}", uuid::Uuid::new_v4().simple()), name, arguments };
    tracing::info!("tool call {}({}) from the intent step", call.name, call.arguments);
    let outcome = ctx.tools.call(&call.name, &call.arguments, timeout).await;
    out.messages.push(ChatMessage::tool_calls("", vec![call.clone()]));
    !apply(ctx, out, sentences, &call, outcome).await
}

/// The LLM side: streams answers, splits them into sentences for [`voice`], runs tool calls and
/// feeds their results back, up to [`MAX_LLM_ROUNDS`] calls.
async fn think(
    ctx: &TurnContext,
    out: &mut TurnOutcome,
    sentences: &Sentences,
    system: &ChatMessage,
    tools: &[ToolSpec],
) {
    let config = &ctx.services.config;
    let tool_timeout = Duration::from_secs(config.tool_call_timeout.max(1));
    let mut emotion_sent = false;
    for round in 0..MAX_LLM_ROUNDS {
        let mut messages = Vec::with_capacity(1 + ctx.history.len() + out.messages.len());
        messages.push(system.clone());
        messages.extend(ctx.history.iter().cloned());
        messages.extend(out.messages.iter().cloned());
        // The last round offers no tools, so the model has to answer in words.
        let offered = if round + 1 < MAX_LLM_ROUNDS { tools } else { &[] };
        let mut stream = match ctx.services.llm.stream(&messages, offered).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("LLM request failed: {e}");
                ctx.services.metrics.provider_error("llm");
                sentences.say(&config.system_error_response, true).await;
                return;
            }
        };
        let mut splitter = sentences.splitter();
        let mut writing = None;
        let mut answer = String::new();
        let mut calls = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(LlmDelta::Text(delta)) => {
                    if !emotion_sent && !delta.trim().is_empty() {
                        let (emoji, name) = text::emotion_of(&delta).unwrap_or(text::DEFAULT_EMOTION);
                        let _ = ctx.outbox.send(Outbound::Emotion { emoji: emoji.into(), name: name.into() });
                        emotion_sent = true;
                    }
                    answer.push_str(&delta);
                    sentences.written(&mut splitter, &delta, &mut writing).await;
                }
                Ok(LlmDelta::ToolCalls(c)) => calls = c,
                Err(e) => {
                    tracing::warn!("LLM stream failed: {e}");
                    ctx.services.metrics.provider_error("llm");
                    if answer.trim().is_empty() && calls.is_empty() {
                        sentences.say(&config.system_error_response, true).await;
                    }
                    break;
                }
            }
        }
        sentences.flush(&mut splitter, &mut writing).await;
        if calls.is_empty() {
            if !answer.trim().is_empty() {
                out.messages.push(ChatMessage::new(Role::Assistant, answer));
            }
            return;
        }
        out.messages.push(ChatMessage::tool_calls(answer, calls.clone()));
        for call in &calls {
            tracing::info!("tool call {}({})", call.name, call.arguments);
        }
        let outcomes = join_all(calls.iter().map(|c| ctx.tools.call(&c.name, &c.arguments, tool_timeout))).await;
        let mut ask_llm = false;
        for (call, outcome) in calls.iter().zip(outcomes) {
            ask_llm |= apply(ctx, out, sentences, call, outcome).await;
        }
        if !ask_llm {
            return;
        }
    }
}

/// Applies what one tool call did, effect by effect in order: speech and audio are queued for
/// the voice side, a new prompt and the end of the conversation are noted, a device tool is
/// called. The tool message kept in the dialogue is what went to the LLM, else the notes, else
/// what was said (else "done"). Returns whether the LLM should be asked again (a result for it,
/// a device tool's answer, or an error). Any text a tool gives is cut at
/// `limits.tool_result_chars`.
async fn apply(
    ctx: &TurnContext,
    out: &mut TurnOutcome,
    sentences: &Sentences,
    call: &ToolCall,
    outcome: ToolOutcome,
) -> bool {
    let config = &ctx.services.config;
    let max = config.limits.tool_result_chars;
    let cut = |text: String| match text::cut_chars(&text, max) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(cut) => {
            tracing::warn!("the result of tool {} was cut to {max} characters", call.name);
            ctx.services.metrics.limit_hit("tool_result_chars");
            cut
        }
    };
    let (effects, from) = match outcome {
        ToolOutcome::Effects { effects, from } => (effects, from),
        ToolOutcome::Error(message) => {
            let message = cut(message);
            tracing::warn!("tool {} failed: {message}", call.name);
            out.messages.push(ChatMessage::tool_result(call.id.clone(), message));
            return true;
        }
    };
    let timeout = Duration::from_secs(config.tool_call_timeout.max(1));
    let (mut for_llm, mut notes, mut said) = (Vec::new(), Vec::new(), Vec::new());
    for effect in effects {
        match effect {
            Effect::Speak(text) => {
                let text = cut(text);
                sentences.say(&text, false).await;
                said.push(text);
            }
            Effect::ReplyToLlm(text) => for_llm.push(cut(text)),
            Effect::Note(text) => notes.push(cut(text)),
            Effect::EndConversation => out.close = true,
            Effect::SetSystemPrompt(prompt) => {
                tracing::info!("the session's system prompt changes ({})", call.name);
                out.prompt = Some(cut(prompt));
            }
            Effect::Play(audio) => match play(ctx, sentences, from.as_ref(), audio, &cut).await {
                Ok(note) => notes.push(note),
                Err(why) => {
                    tracing::warn!("tool {}: {why}", call.name);
                    for_llm.push(why);
                }
            },
            Effect::CallDeviceTool { name, arguments_json } => {
                let answer = ctx.tools.call_device(&name, &arguments_json, timeout).await;
                for_llm.push(cut(answer.unwrap_or_else(|why| why)));
            }
        }
    }
    let ask_llm = !for_llm.is_empty();
    let result = [for_llm, notes, said].into_iter().find(|texts| !texts.is_empty()).map(|texts| texts.join("\n"));
    out.messages.push(ChatMessage::tool_result(call.id.clone(), result.unwrap_or_else(|| "done".to_owned())));
    ask_llm
}

/// Opens the audio a tool's `play` effect names (under the grant of `from`, the extension that
/// answered) and queues it for the voice side after what came before; the note for the dialogue,
/// or why it cannot play (for the LLM).
async fn play(
    ctx: &TurnContext,
    sentences: &Sentences,
    from: Option<&Arc<LoadedExtension>>,
    audio: crate::extensions::PlayAudio,
    cut: &impl Fn(String) -> String,
) -> Result<String, String> {
    let (Some(ext), Some(scope)) = (from, &ctx.extensions) else {
        return Err("only an extension can play audio".to_owned());
    };
    let limits = crate::media::MediaLimits::of(&ctx.services.config.limits);
    let chunks = crate::media::open(&audio.source, ext, scope, limits).await.map_err(|e| e.to_string())?;
    tracing::info!("{} plays {:?}", ext.id(), audio.source);
    let title = audio.title.map(cut);
    let note = format!("playing {}", title.as_deref().unwrap_or("audio"));
    let _ = sentences.tx.send(Sentence::Audio { title, chunks }).await;
    Ok(note)
}

/// One sentence for the [`voice`] side.
enum Sentence {
    /// Model output: synthesized every time.
    Reply(String),
    /// A fixed phrase (the error response): served from the shared phrase cache after its first use.
    Fixed(String),
    /// Audio a tool plays (already opened), with its title as the subtitle.
    Audio {
        /// Shown while it plays.
        title: Option<String>,
        /// The decoded audio; ends with it.
        chunks: mpsc::Receiver<AudioChunk>,
    },
    /// Model output still being written, for a TTS that takes text as it comes: its new text
    /// arrives on `pieces` (closed when the sentence is complete); `text` is the text so far.
    Writing {
        /// The sentence's text, piece by piece.
        pieces: mpsc::Receiver<String>,
        /// The text written so far: the subtitle. Its sender closes when the sentence is complete
        /// (or the thinking side ends), so waiting for that gives the whole sentence.
        text: watch::Receiver<String>,
    },
}

/// Pieces of one sentence queued for a text-streaming TTS before it reads them.
const WRITING_PIECES: usize = 64;

/// The sentence being written to a text-streaming TTS (see [`Sentences::written`]).
struct Writing {
    tx: mpsc::Sender<String>,
    text: watch::Sender<String>,
}

impl Writing {
    /// Sends what `now` (the sentence's cleaned text so far) adds to what was sent. Cleaning may
    /// rewrite the end of the text as more arrives (a markdown mark completed): only the part
    /// past what both share is new.
    async fn grow(&self, now: &str) {
        let mut piece = String::new();
        self.text.send_if_modified(|sent| {
            if now.len() <= sent.len() || !now.starts_with(sent.as_str()) {
                return false;
            }
            piece = now.get(sent.len()..).unwrap_or_default().to_owned();
            sent.push_str(&piece);
            true
        });
        if !piece.is_empty() {
            // A TTS that failed has dropped its end: the text still grows for the subtitle.
            let _ = self.tx.send(piece).await;
        }
    }

    /// The sentence is complete as `whole`: its last piece goes out and the pieces end.
    async fn complete(self, whole: &str) {
        let mut piece = String::new();
        self.text.send_modify(|sent| {
            let shared = common_prefix(sent, whole);
            piece = whole.get(shared..).unwrap_or_default().to_owned();
            whole.clone_into(sent);
        });
        if !piece.is_empty() {
            let _ = self.tx.send(piece).await;
        }
    }
}

/// The whole text of a sentence being written, once its writer has completed it.
async fn whole_text(text: &mut watch::Receiver<String>) -> String {
    while text.changed().await.is_ok() {}
    text.borrow().clone()
}

/// The length in bytes of the longest common prefix of `a` and `b` (on a char boundary).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).take_while(|((_, x), y)| x == y).last().map_or(0, |((i, c), _)| i + c.len_utf8())
}

/// The thinking side's way to the [`voice`] side: sentences of at most `max_chars` characters.
struct Sentences {
    tx: mpsc::Sender<Sentence>,
    max_chars: usize,
    /// Whether the TTS takes a sentence's text as it is written.
    streams_text: bool,
}

impl Sentences {
    /// A splitter for one stream of model output.
    fn splitter(&self) -> SentenceSplitter {
        SentenceSplitter::with_max_chars(self.max_chars)
    }

    /// Queues one sentence of model output.
    async fn reply(&self, sentence: String) {
        let _ = self.tx.send(Sentence::Reply(sentence)).await;
    }

    /// Feeds one LLM delta through `splitter`: complete sentences are queued; with a TTS that
    /// takes text as it is written, the sentence being written is queued from its first words on
    /// and grows piece by piece (`writing` is that sentence).
    async fn written(&self, splitter: &mut SentenceSplitter, delta: &str, writing: &mut Option<Writing>) {
        for sentence in splitter.push(delta) {
            match writing.take() {
                Some(open) => open.complete(&sentence).await,
                None => self.reply(sentence).await,
            }
        }
        if !self.streams_text {
            return;
        }
        let pending = splitter.pending();
        if pending.is_empty() {
            return;
        }
        if writing.is_none() {
            let (tx, pieces) = mpsc::channel(WRITING_PIECES);
            let (text, subtitle) = watch::channel(String::new());
            let _ = self.tx.send(Sentence::Writing { pieces, text: subtitle }).await;
            *writing = Some(Writing { tx, text });
        }
        if let Some(open) = writing {
            open.grow(&pending).await;
        }
    }

    /// The end of one stream of model output: the rest of the text is the last sentence.
    async fn flush(&self, splitter: &mut SentenceSplitter, writing: &mut Option<Writing>) {
        let rest = splitter.finish();
        match (writing.take(), rest) {
            (Some(open), Some(rest)) => open.complete(&rest).await,
            (Some(open), None) => {
                let so_far = open.text.borrow().clone();
                open.complete(&so_far).await;
            }
            (None, Some(rest)) => self.reply(rest).await,
            (None, None) => {}
        }
    }

    /// Queues a whole text (the error response, a tool's spoken answer) as sentences.
    async fn say(&self, text: &str, fixed: bool) {
        for sentence in split_sentences(text, self.max_chars) {
            let item = if fixed { Sentence::Fixed(sentence) } else { Sentence::Reply(sentence) };
            let _ = self.tx.send(item).await;
        }
    }
}

/// A whole text cut into the sentences that are spoken one by one.
fn split_sentences(text: &str, max_chars: usize) -> Vec<String> {
    let mut splitter = SentenceSplitter::with_max_chars(max_chars);
    let mut sentences = splitter.push(text);
    sentences.extend(splitter.finish());
    sentences
}

/// The TTS side: starts each sentence's synthesis in order and queues it to the speaker as soon
/// as its first audio arrives; the rest streams in while it plays, and sentence N+1 is being
/// synthesized while sentence N plays.
async fn voice(ctx: &TurnContext, mut sentences: mpsc::Receiver<Sentence>) {
    let config = &ctx.services.config;
    let timeout = Duration::from_secs(config.tts_timeout.max(1));
    let mut error_spoken = false;
    let mut first_audio = true;
    while let Some(sentence) = sentences.recv().await {
        let (text, started) = match sentence {
            Sentence::Fixed(text) => {
                speak_fixed(ctx, text, timeout).await;
                continue;
            }
            Sentence::Audio { title, chunks } => {
                ctx.speaker.play(&ctx.cancel, title, Source::Stream(chunks)).await;
                continue;
            }
            Sentence::Reply(text) => {
                let started = start_speaking(ctx, &text, ctx.services.tts.speak(&text), timeout).await;
                (text, started)
            }
            Sentence::Writing { pieces, mut text } => {
                let started =
                    start_speaking(ctx, "(being written)", ctx.services.tts.speak_text(pieces), timeout).await;
                let text = match started {
                    // Playing: the subtitle is what is written by the first audio.
                    Some(_) => text.borrow().clone(),
                    // Failed: the sentence is shown whole once it is written (or the turn ends).
                    None => tokio::select! {
                        () = ctx.cancel.cancelled() => text.borrow().clone(),
                        whole = whole_text(&mut text) => whole,
                    },
                };
                (text, started)
            }
        };
        match started {
            Some(chunks) => {
                if std::mem::take(&mut first_audio) {
                    ctx.services.metrics.first_audio.observe(ctx.started.elapsed().as_secs_f64());
                }
                ctx.speaker.play(&ctx.cancel, Some(text), Source::Stream(chunks)).await;
            }
            None if !error_spoken => {
                // Say once that something went wrong (if the TTS can say anything at all), with
                // the failed sentence still shown as the subtitle.
                // The error phrase usually comes from the phrase cache, so it is heard even while
                // the TTS is down.
                error_spoken = true;
                ctx.speaker.play(&ctx.cancel, Some(text), Source::Clip(AudioClip::default())).await;
                for phrase in split_sentences(&config.system_error_response, config.limits.sentence_chars) {
                    speak_fixed(ctx, phrase, timeout).await;
                }
            }
            None => ctx.speaker.play(&ctx.cancel, Some(text), Source::Clip(AudioClip::default())).await,
        }
    }
}

/// Starts synthesizing `sentence`: waits (at most `timeout`) for its first audio, then reads the
/// rest into a bounded channel in the background, each piece within `timeout` of the last. A
/// stream that breaks off midway keeps what arrived (the speaker plays it and the sentence ends
/// there). `None` when the TTS fails before any audio.
async fn start_speaking(
    ctx: &TurnContext,
    sentence: &str,
    open: impl std::future::Future<Output = Result<crate::tts::AudioStream, ProviderError>>,
    timeout: Duration,
) -> Option<mpsc::Receiver<AudioChunk>> {
    let metrics = &ctx.services.metrics;
    let failed = |why: String| {
        tracing::warn!("TTS failed for {sentence:?}: {why}");
        metrics.provider_error("tts");
        None
    };
    let started = tokio::time::timeout(timeout, async {
        let mut stream = open.await?;
        let first = stream.next().await.transpose()?;
        Ok::<_, ProviderError>((stream, first))
    })
    .await;
    let (mut stream, first) = match started {
        Err(_) => return failed(format!("no audio within {timeout:?}")),
        Ok(Err(e)) => return failed(e.to_string()),
        Ok(Ok((stream, first))) => (stream, first),
    };
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let Some(first) = first else { return Some(rx) };
    let _ = tx.try_send(first);
    let (cancel, metrics, sentence) = (ctx.cancel.clone(), Arc::clone(metrics), sentence.to_owned());
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = tokio::time::timeout(timeout, stream.next()) => next,
            };
            let why = match next {
                Ok(None) => return,
                Ok(Some(Ok(chunk))) => {
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Some(Err(e))) => e.to_string(),
                Err(_) => format!("nothing for {timeout:?}"),
            };
            tracing::warn!("the TTS stream of {sentence:?} broke off ({why}); what arrived is spoken");
            metrics.provider_error("tts");
            return;
        }
    }));
    Some(rx)
}

/// Speaks a fixed phrase: from the shared cache when this voice has said it before, otherwise
/// synthesized, played, and cached once it has been sent whole.
async fn speak_fixed(ctx: &TurnContext, text: String, timeout: Duration) {
    let phrases = &ctx.services.phrases;
    let key = PhraseCache::key(&ctx.services.voice_key, &text);
    if let Some(frames) = phrases.get(&key) {
        ctx.speaker.play(&ctx.cancel, Some(text), Source::Encoded(frames)).await;
        return;
    }
    let Some(clip) = synthesize(ctx, &text, timeout).await else {
        ctx.speaker.play(&ctx.cancel, Some(text), Source::Clip(AudioClip::default())).await;
        return;
    };
    let (record, recorded) = tokio::sync::oneshot::channel();
    ctx.speaker.play_recorded(&ctx.cancel, Some(text), Source::Clip(clip), record).await;
    let phrases = Arc::clone(phrases);
    // Stored when the speaker has encoded the whole phrase; never if the turn is cancelled first.
    tokio::spawn(async move {
        if let Ok(frames) = recorded.await {
            phrases.insert(key, frames);
        }
    });
}

async fn synthesize(ctx: &TurnContext, sentence: &str, timeout: Duration) -> Option<AudioClip> {
    match tokio::time::timeout(timeout, ctx.services.tts.synthesize(sentence)).await {
        Ok(Ok(clip)) => Some(clip),
        Ok(Err(e)) => {
            tracing::warn!("TTS failed for {sentence:?}: {e}");
            ctx.services.metrics.provider_error("tts");
            None
        }
        Err(_) => {
            tracing::warn!("TTS timed out after {timeout:?} for {sentence:?}");
            ctx.services.metrics.provider_error("tts");
            None
        }
    }
}

/// The session's prompt (else the configured one) plus the current local time, which the model
/// cannot know.
fn system_prompt(config: &Config, session_prompt: Option<&str>) -> String {
    let now = chrono::Utc::now();
    let now = match config.server.timezone_offset.checked_mul(3600).and_then(chrono::FixedOffset::east_opt) {
        Some(offset) => now.with_timezone(&offset).fixed_offset(),
        None => now.fixed_offset(),
    };
    let prompt = session_prompt.unwrap_or(&config.prompt);
    format!("{}\n\nCurrent local time: {}", prompt.trim(), now.format("%Y-%m-%d %H:%M, %A"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the voice side received: whole sentences as they are, sentences being written as
    /// their pieces (collected once complete).
    async fn received(mut rx: mpsc::Receiver<Sentence>) -> Vec<Result<String, Vec<String>>> {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            match item {
                Sentence::Reply(text) | Sentence::Fixed(text) => out.push(Ok(text)),
                Sentence::Audio { .. } => out.push(Ok("(audio)".into())),
                Sentence::Writing { mut pieces, .. } => {
                    let mut all = Vec::new();
                    while let Some(piece) = pieces.recv().await {
                        all.push(piece);
                    }
                    out.push(Err(all));
                }
            }
        }
        out
    }

    async fn feed(streams_text: bool, deltas: &[&str]) -> Vec<Result<String, Vec<String>>> {
        let (tx, rx) = mpsc::channel(32);
        let collector = tokio::spawn(received(rx));
        let sentences = Sentences { tx, max_chars: 300, streams_text };
        let mut splitter = sentences.splitter();
        let mut writing = None;
        for delta in deltas {
            sentences.written(&mut splitter, delta, &mut writing).await;
        }
        sentences.flush(&mut splitter, &mut writing).await;
        drop(sentences);
        collector.await.expect("collector")
    }

    #[tokio::test]
    async fn a_text_streaming_tts_gets_each_sentence_from_its_first_words() {
        let deltas = ["Once upon", " a time", " there was 3.", "5 cats. And", " a dog", "."];
        let streamed = feed(true, &deltas).await;
        assert_eq!(
            streamed,
            vec![
                Err(vec!["Once upon".into(), " a time".into(), " there was 3".into(), ".5 cats".into()]),
                Err(vec!["And".into(), " a dog".into()]),
            ]
        );
        // Joined, the pieces are exactly the sentences a whole-sentence TTS gets.
        let whole = feed(false, &deltas).await;
        assert_eq!(whole, vec![Ok("Once upon a time there was 3.5 cats".into()), Ok("And a dog".into())]);
    }

    #[tokio::test]
    async fn a_sentence_whose_tts_failed_at_once_still_gets_its_whole_subtitle() {
        let (tx, mut rx) = mpsc::channel(32);
        let sentences = Sentences { tx, max_chars: 300, streams_text: true };
        let mut splitter = sentences.splitter();
        let mut writing = None;
        sentences.written(&mut splitter, "Hello", &mut writing).await;
        let Some(Sentence::Writing { pieces, mut text }) = rx.recv().await else { panic!("no sentence being written") };
        // The TTS fails on its first piece and drops its end; the subtitle is not complete yet.
        drop(pieces);
        assert_eq!(*text.borrow(), "Hello");
        let subtitle = tokio::spawn(async move { whole_text(&mut text).await });
        sentences.written(&mut splitter, " there", &mut writing).await;
        sentences.flush(&mut splitter, &mut writing).await;
        assert_eq!(subtitle.await.expect("subtitle"), "Hello there");
    }

    #[test]
    fn common_prefix_is_on_char_boundaries() {
        assert_eq!(common_prefix("你好吗", "你好呀"), "你好".len());
        assert_eq!(common_prefix("", "abc"), 0);
        assert_eq!(common_prefix("abc", "abc"), 3);
    }
}
