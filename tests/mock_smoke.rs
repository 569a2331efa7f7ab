//! The OpenAI-compatible mock speaks the real protocol: SSE chat streams (text and tool calls),
//! multipart transcriptions and WAV speech, checked with a plain HTTP client.

use std::time::Duration;

use serde_json::{Value, json};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Posts a streamed chat request and returns the parsed `data:` chunks (without `[DONE]`),
/// checking that the stream ends with `[DONE]`.
async fn chat(mock: &MockOpenAi, messages: Value, tools: Value) -> Vec<Value> {
    let body = json!({"model": "mock-llm", "stream": true, "messages": messages, "tools": tools});
    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("SSE data line")).unwrap())
        .collect()
}

fn text_of(chunks: &[Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

fn finish_reason(chunks: &[Value]) -> Option<String> {
    chunks.last().and_then(|c| c["choices"][0]["finish_reason"].as_str()).map(String::from)
}

fn volume_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "self_audio_speaker_set_volume",
        "description": "Set the speaker volume",
        "parameters": {"type": "object", "properties": {"volume": {"type": "integer"}}, "required": ["volume"]},
    }}])
}

#[tokio::test]
async fn plain_reply_streams_in_small_chunks() {
    let reply = "Sure thing! The weather today is sunny, with a light breeze.";
    let mock = MockOpenAi::start(MockScript::default().reply(reply)).await.unwrap();
    let chunks = chat(&mock, json!([{"role": "user", "content": "How is the weather?"}]), json!([])).await;
    assert_eq!(text_of(&chunks), reply);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(finish_reason(&chunks).as_deref(), Some("stop"));
    assert!(chunks.len() > 10, "the reply should come in many small pieces");

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].body["messages"][0]["content"], "How is the weather?");
}

#[tokio::test]
async fn tool_call_then_after_tool_reply() {
    let args = json!({"volume": 30});
    let script = MockScript::default().reply("I can't change the volume.").tool(
        "volume",
        "self_audio_speaker_set_volume",
        args.clone(),
        "Done, the volume is now 30.",
    );
    let mock = MockOpenAi::start(script).await.unwrap();
    let user = json!({"role": "user", "content": "Set the volume to 30 please"});

    // The tool is offered: the model calls it, streamed in fragments.
    let chunks = chat(&mock, json!([user]), volume_tool()).await;
    assert_eq!(finish_reason(&chunks).as_deref(), Some("tool_calls"));
    let (mut id, mut name, mut arguments, mut fragments) = (String::new(), String::new(), String::new(), 0);
    for chunk in &chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(call["index"], 0);
            id += call["id"].as_str().unwrap_or("");
            name += call["function"]["name"].as_str().unwrap_or("");
            if let Some(piece) = call["function"]["arguments"].as_str().filter(|p| !p.is_empty()) {
                arguments += piece;
                fragments += 1;
            }
        }
    }
    assert_eq!(name, "self_audio_speaker_set_volume");
    assert!(fragments >= 3, "arguments should arrive in fragments, got {fragments}");
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), args);
    assert!(id.starts_with("call_"));

    // The tool result comes back: the after-tool answer.
    let assistant = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]});
    let result = json!({"role": "tool", "tool_call_id": id, "content": "{\"success\":true}"});
    let chunks = chat(&mock, json!([user, assistant, result]), volume_tool()).await;
    assert_eq!(text_of(&chunks), "Done, the volume is now 30.");
    assert_eq!(finish_reason(&chunks).as_deref(), Some("stop"));

    // The tool is not offered: the default reply, so tests notice the missing tool.
    let chunks = chat(&mock, json!([user]), json!([])).await;
    assert_eq!(text_of(&chunks), "I can't change the volume.");

    // A tool result that answers no call is refused, as OpenAI does.
    let orphan = json!({"role": "tool", "tool_call_id": "call_nope", "content": "{}"});
    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("test")
        .json(&json!({"model": "m", "stream": true, "messages": [user, orphan]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn latency_is_applied() {
    let script = MockScript::default().reply("One two three.").latency(Duration::from_millis(300), Duration::ZERO);
    let mock = MockOpenAi::start(script).await.unwrap();
    let started = std::time::Instant::now();
    chat(&mock, json!([{"role": "user", "content": "hi"}]), json!([])).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn tts_answers_real_wav_speech() {
    let mock = MockOpenAi::start(MockScript::default()).await.unwrap();
    let speak = |input: &str, format: &str| {
        client()
            .post(format!("{}/audio/speech", mock.base_url()))
            .bearer_auth("test")
            .json(&json!({"model": "mock-tts", "input": input, "voice": "en", "speed": 1.0, "response_format": format}))
            .send()
    };
    let response = speak("The volume is now thirty percent.", "wav").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let wav = response.bytes().await.unwrap();
    let (pcm, rate) = speech::read_wav(&wav).unwrap();
    assert_eq!(rate, 22_050);
    let seconds = pcm.len() as f64 / f64::from(rate);
    assert!((1.0..5.0).contains(&seconds), "{seconds} s of speech");

    // Cached: the same bytes again.
    let again = speak("The volume is now thirty percent.", "wav").await.unwrap().bytes().await.unwrap();
    assert_eq!(again, wav);
    assert_eq!(speak("hello", "mp3").await.unwrap().status(), 400);

    mock.set_script(MockScript::default().tts_fail(true));
    let failed = speak("hello", "wav").await.unwrap();
    assert_eq!(failed.status(), 500);
    assert!(failed.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

async fn transcribe(mock: &MockOpenAi, file: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("model", "mock-asr")
        .text("response_format", "json")
        .part("file", reqwest::multipart::Part::bytes(file).file_name("audio.wav").mime_str("audio/wav").unwrap());
    client()
        .post(format!("{}/audio/transcriptions", mock.base_url()))
        .bearer_auth("test")
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn asr_checks_the_upload() {
    let mock = MockOpenAi::start(MockScript::default().transcript("Turn the volume up.")).await.unwrap();
    let pcm = speech::with_silence(&speech::speech_16k("turn the volume up").unwrap(), 300, 300);
    let response = transcribe(&mock, speech::wav_bytes(&pcm, 16_000).unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"text": "Turn the volume up."}));
    let recorded = mock.requests();
    assert_eq!(recorded[0].path, "/v1/audio/transcriptions");
    assert_eq!(recorded[0].body["model"], "mock-asr");
    let expected_ms = (pcm.len() * 1000 / 16_000) as u64;
    assert_eq!(recorded[0].body["audio_ms"], expected_ms);

    // Junk, the wrong rate, and too little audio are refused with a message.
    for bad in [
        b"definitely not a wav file".to_vec(),
        speech::wav_bytes(&pcm, 22_050).unwrap(),
        speech::wav_bytes(&pcm[..1600], 16_000).unwrap(),
    ] {
        let response = transcribe(&mock, bad).await;
        assert_eq!(response.status(), 400);
        assert!(response.json::<Value>().await.unwrap()["error"]["message"].is_string());
    }

    mock.set_transcript("Something else.");
    let response = transcribe(&mock, speech::wav_bytes(&pcm, 16_000).unwrap()).await;
    assert_eq!(response.json::<Value>().await.unwrap()["text"], "Something else.");

    // Without a token: 401, like OpenAI.
    let response = client().post(format!("{}/audio/transcriptions", mock.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn scripted_failures_and_config() {
    let mock = MockOpenAi::start(MockScript::default().llm_fail(true).asr_fail(true)).await.unwrap();
    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("test")
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let wav = speech::wav_bytes(&vec![0; 16_000], 16_000).unwrap();
    assert_eq!(transcribe(&mock, wav).await.status(), 500);

    let yaml = mock.config_override_yaml();
    assert!(yaml.contains(&format!("base_url: \"{}/audio/transcriptions\"", mock.base_url())), "{yaml}");
    assert!(yaml.contains(&format!("api_url: \"{}/audio/speech\"", mock.base_url())), "{yaml}");

    // Dropping the mock stops it.
    let url = format!("{}/chat/completions", mock.base_url());
    drop(mock);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client().post(url).send().await.is_err());
}
