//! End-to-end over MQTT + UDP (device-protocol.md §3), the firmware's second transport: OTA hands
//! out the `mqtt` block, the simulator connects with it like the firmware (MQTT 3.1.1, hello
//! `version 3` / `transport udp`, AES-128-CTR datagrams), and the same session as over WebSocket
//! answers: a spoken turn, a device MCP tool call, abort, goodbye.
//!
//! - The built-in endpoint: a forged password, datagrams under a wrong key, a replayed sequence
//!   and a datagram from a second address are dropped and counted while the session goes on.
//! - Fleet mode: two instances join a real `mosquitto` (and share a real Redis); 200 devices are
//!   served, part by each, and the devices of the instance that stops are served by the other.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UdpSocket;
use xiaozhi_e2e::harness::{TestServer, abort_and_watch, metric};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::mosquitto::Mosquitto;
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::protocol::udp::{Sealer, SessionKeys};
use xiaozhi_server::simulator::cli::{TransportArg, apply_ota};
use xiaozhi_server::simulator::{SimConfig, SimDevice, SimEvent, SimTransport};
use xiaozhi_server::store::testing::RedisServer;

const REPLY_WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "mqtt-test-signature-key";
const DEVICE: &str = "aa:bb:cc:00:0e:01";
const CLIENT: &str = "7d3c1f0e-2b4a-4c8e-9a41-3d2b6f9e0c01";

async fn mqtt_server(mock: &MockOpenAi) -> anyhow::Result<TestServer> {
    TestServer::start_with_server_yaml(
        mock,
        &format!("  mqtt_signature_key: {KEY}\n"),
        "mqtt:\n  enabled: true\n  port: 0\n  udp_port: 0\n",
    )
    .await
}

/// The firmware's OTA check, then the device configured from the answer.
async fn ota_config(
    server: &TestServer,
    device_id: &str,
    client_id: &str,
) -> anyhow::Result<(SimConfig, serde_json::Value)> {
    ota_config_with(server, device_id, client_id, false).await
}

/// [`ota_config`]; with `subscribe`, the device subscribes to its topic like firmware before 2025
/// (a stock broker such as mosquitto delivers to it only then).
async fn ota_config_with(
    server: &TestServer,
    device_id: &str,
    client_id: &str,
    subscribe: bool,
) -> anyhow::Result<(SimConfig, serde_json::Value)> {
    let body = reqwest::Client::new()
        .post(server.ota_url())
        .header("Device-Id", device_id)
        .header("Client-Id", client_id)
        .json(&json!({"application": {"version": "2.4.2"}, "board": {"type": "bread-compact-wifi"}}))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let mut cfg = SimConfig { device_id: device_id.into(), client_id: client_id.into(), ..SimConfig::default() };
    apply_ota(&body, &mut cfg, TransportArg::Mqtt, subscribe)?;
    Ok((cfg, body))
}

fn script() -> MockScript {
    MockScript::default()
        .transcript("What is the weather like today?")
        .reply("😊 It is sunny and warm today. Enjoy it!")
        .tool("volume", "self_audio_speaker_set_volume", json!({"volume": 30}), "😊 Done, the volume is now thirty.")
}

/// A spoken turn: the Opus uplink in datagrams, the reply in datagrams, paced.
async fn spoken_turn(device: &mut SimDevice, mock: &MockOpenAi) -> anyhow::Result<()> {
    mock.warm_tts(&["It is sunny and warm today", "Enjoy it"]).await?;
    device.listen_start(ListenMode::Auto).await?;
    let speech = speech_16k("what is the weather like today")?;
    device.stream_speech(&with_silence(&speech, 400, 2000), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("What is the weather like today?"));
    assert_eq!(reply.sentences, ["It is sunny and warm today", "Enjoy it"]);
    assert!(reply.audio_ms() > 1000, "reply audio: {} ms", reply.audio_ms());
    assert_eq!(reply.frames_outside_speaking, 0);
    assert!(reply.max_frames_ahead(60) <= 40.0, "pacing ran {} frames ahead", reply.max_frames_ahead(60));
    assert!(device.protocol_errors().is_empty(), "{:?}", device.protocol_errors());
    Ok(())
}

/// The LLM calls the device's volume tool over MCP.
async fn volume_tool_call(device: &mut SimDevice) -> anyhow::Result<()> {
    device.detect("please set the volume to thirty").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(device.mcp_calls(), vec![("self.audio_speaker.set_volume".to_string(), json!({"volume": 30}))]);
    assert_eq!(device.volume(), 30);
    assert_eq!(reply.sentences, ["Done", "the volume is now thirty"]);
    Ok(())
}

/// Goodbye from the device: the session ends (the server's goodbye closes the channel).
async fn goodbye(mut device: SimDevice) -> anyhow::Result<()> {
    device.goodbye().await?;
    let mut closed = false;
    while let Some((_, event)) = device.next_event(Duration::from_secs(5)).await {
        if matches!(event, SimEvent::Closed(_)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the session ended after the device's goodbye");
    device.close_abruptly().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holds_a_session_over_mqtt_and_udp_and_forgeries_are_dropped_and_counted() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(script()).await?;
    let server = mqtt_server(&mock).await?;
    let (mqtt_addr, udp_addr) = server.server.mqtt_addrs.expect("the MQTT endpoint runs");

    // OTA: the mqtt block and no websocket block.
    let (cfg, body) = ota_config(&server, DEVICE, CLIENT).await?;
    assert!(body.get("websocket").is_none(), "{body}");
    assert_eq!(body["mqtt"]["endpoint"], format!("127.0.0.1:{}", mqtt_addr.port()));
    assert_eq!(body["mqtt"]["publish_topic"], "device-server/aa_bb_cc_00_0e_01");

    // A forged password is refused (CONNACK 4) and counted.
    let mut forged = cfg.clone();
    let SimTransport::Mqtt(settings) = &mut forged.transport else { unreachable!() };
    settings.password = "Zm9yZ2Vk".into();
    let refused = SimDevice::connect(forged).await.expect_err("a forged password is refused");
    assert!(format!("{refused:#}").contains("BadUserNamePassword"), "{refused:#}");
    assert_eq!(metric(server.server.http_addr, "xiaozhi_mqtt_refused_total{reason=\"bad_password\"}").await?, 1.0);

    // Hello: version 3, transport udp, the udp object.
    let mut device = SimDevice::connect(cfg).await?;
    let hello = device.server_hello().clone();
    assert_eq!((hello["version"].as_u64(), hello["transport"].as_str()), (Some(3), Some("udp")));
    assert_eq!(hello["udp"]["server"], "127.0.0.1");
    assert_eq!(hello["udp"]["port"], udp_addr.port());
    assert_eq!(hello["udp"]["encryption"], "aes-128-ctr");
    assert_eq!(hello["udp"]["key"].as_str().map(str::len), Some(32));

    spoken_turn(&mut device, &mock).await?;

    // Forgeries on the session's ssrc: a wrong key, a replayed sequence, a second address.
    let (keys, server_udp) = device.udp_channel().expect("an audio channel");
    let silence = device.encode_speech(&[0i16; 960])?.remove(0);
    let attacker = UdpSocket::bind("127.0.0.1:0").await?;
    // Under another key: CTR has no integrity check, so the server checks what the datagram opens
    // into. Pick a forgery that opens into bytes that are not a 60 ms Opus packet (almost every
    // one does; the loop makes the test independent of luck).
    let forged = (0u8..=255)
        .map(|fill| {
            let mut wrong = Sealer::new(SessionKeys::new([0x5a; 16], keys.ssrc()));
            for _ in 0..200 {
                let _ = wrong.seal(&silence, 0);
            }
            wrong.seal(&[fill; 40], 0).expect("sealed")
        })
        .find(|datagram| {
            let mut opened = Vec::new();
            let _ = xiaozhi_server::protocol::udp::Opener::new(keys.clone()).open(datagram, |p| {
                opened = p.to_vec();
                true
            });
            !xiaozhi_server::audio::opus::is_uplink_packet(&opened, 60)
        })
        .expect("a forgery that does not open into audio");
    device.send_binary_raw(forged).await?;
    let replayed = Sealer::new(keys.clone()).seal(&silence, 0).expect("sealed");
    device.send_binary_raw(replayed).await?;
    let mut ahead = Sealer::new(keys.clone());
    for _ in 0..300 {
        let _ = ahead.seal(&silence, 0);
    }
    attacker.send_to(&ahead.seal(&silence, 0).expect("sealed"), server_udp).await?;
    let counted = |reason: &'static str| {
        let http = server.server.http_addr;
        async move { metric(http, &format!("xiaozhi_udp_dropped_total{{reason=\"{reason}\"}}")).await }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while counted("other_address").await? < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted("not_audio").await?, 1.0, "the wrong key");
    assert_eq!(counted("replayed").await?, 1.0, "the replay");
    assert_eq!(counted("other_address").await?, 1.0, "the second address");

    // The session goes on: a device MCP tool call.
    volume_tool_call(&mut device).await?;

    // Abort stops the audio within a frame.
    let long = "😊 Here is a long story. ".to_string()
        + &"Once upon a time there was a little robot who liked to talk about the weather all day long. ".repeat(6);
    mock.set_reply(long);
    device.detect("tell me a story").await?;
    let mut frames = 0;
    while frames < 12 {
        match device.next_event(REPLY_WAIT).await {
            Some((_, SimEvent::Audio { .. })) => frames += 1,
            Some(_) => {}
            None => anyhow::bail!("no audio before abort"),
        }
    }
    let aborted = abort_and_watch(&mut device, Duration::from_millis(60)).await?;
    assert!(aborted.stop_after < Duration::from_millis(500), "tts stop {:?} after abort", aborted.stop_after);
    assert!(aborted.late_frames <= 1, "{} frames more than one frame after the abort", aborted.late_frames);

    goodbye(device).await?;

    // A new connection of the same device: the exit command ends its session with our goodbye.
    let (cfg, _) = ota_config(&server, DEVICE, CLIENT).await?;
    let mut device = SimDevice::connect(cfg).await?;
    device.detect("退出").await?;
    let mut goodbye = None;
    while let Some((_, event)) = device.next_event(REPLY_WAIT).await {
        match event {
            SimEvent::Json(v) if v["type"] == "goodbye" => goodbye = Some(v),
            SimEvent::Closed(why) => {
                assert_eq!(why.as_deref(), Some("goodbye"));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(goodbye.expect("our goodbye")["session_id"], device.session_id());
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_endpoint_refuses_bad_clients_and_closes_silent_ones() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = mqtt_server(&mock).await?;
    let (mqtt_addr, _) = server.server.mqtt_addrs.expect("the MQTT endpoint runs");
    // CONNECT (MQTT 3.1.1, keep-alive 1 s) with a client id that carries no MAC: CONNACK 2.
    let connect = |client_id: &str, keepalive: u16| {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02]);
        body.extend_from_slice(&keepalive.to_be_bytes());
        body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        body.extend_from_slice(client_id.as_bytes());
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    };
    let mut socket = tokio::net::TcpStream::connect(mqtt_addr).await?;
    socket.write_all(&connect("not-a-device", 1)).await?;
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).await?;
    assert_eq!(connack, [0x20, 2, 0, 2], "identifier rejected");
    assert_eq!(metric(server.server.http_addr, "xiaozhi_mqtt_refused_total{reason=\"bad_client_id\"}").await?, 1.0);

    // Without the signature key's password: CONNACK 4.
    let mut socket = tokio::net::TcpStream::connect(mqtt_addr).await?;
    socket.write_all(&connect("GID_test@@@aa_bb_cc_00_0e_02@@@u", 1)).await?;
    socket.read_exact(&mut connack).await?;
    assert_eq!(connack, [0x20, 2, 0, 4], "bad user name or password");

    // Accepted (no key configured on this second server, one client at a time), then silent:
    // closed after 1.5 s; meanwhile a second connection is closed at once and counted.
    let open = TestServer::start_with_server_yaml(
        &mock,
        "",
        "mqtt:\n  enabled: true\n  port: 0\n  udp_port: 0\nlimits:\n  mqtt_clients: 1\n",
    )
    .await?;
    let (open_addr, _) = open.server.mqtt_addrs.expect("the MQTT endpoint runs");
    let mut socket = tokio::net::TcpStream::connect(open_addr).await?;
    socket.write_all(&connect("GID_test@@@aa_bb_cc_00_0e_03@@@u", 1)).await?;
    socket.read_exact(&mut connack).await?;
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    let started = Instant::now();
    let mut second = tokio::net::TcpStream::connect(open_addr).await?;
    let mut nothing = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), second.read_to_end(&mut nothing)).await??;
    assert_eq!(n, 0, "over limits.mqtt_clients: closed at once");
    assert_eq!(metric(open.server.http_addr, "xiaozhi_mqtt_refused_total{reason=\"full\"}").await?, 1.0);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await??;
    let silent = started.elapsed();
    assert_eq!(n, 0);
    assert!(silent >= Duration::from_millis(1400) && silent < Duration::from_millis(3000), "closed after {silent:?}");

    // A non-CONNECT first packet is refused and counted.
    let mut socket = tokio::net::TcpStream::connect(open_addr).await?;
    socket.write_all(&[0xC0, 0]).await?;
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await??;
    assert_eq!(n, 0);
    assert_eq!(metric(open.server.http_addr, "xiaozhi_mqtt_refused_total{reason=\"protocol\"}").await?, 1.0);
    open.server.shutdown().await;
    server.server.shutdown().await;
    Ok(())
}

/// The udp port of a device's server hello: which instance serves it.
fn served_by(device: &SimDevice) -> u16 {
    device.server_hello()["udp"]["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
}

/// Connects the devices of `configs`, 20 at a time.
async fn connect_all(configs: Vec<SimConfig>) -> anyhow::Result<Vec<SimDevice>> {
    let mut devices = Vec::with_capacity(configs.len());
    for batch in configs.chunks(20) {
        for device in futures_util::future::join_all(batch.iter().cloned().map(SimDevice::connect)).await {
            devices.push(device?);
        }
    }
    Ok(devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_mosquitto_share_200_devices_and_take_over_when_one_stops() -> anyhow::Result<()> {
    const DEVICES: usize = 200;
    let redis = RedisServer::start()?;
    let broker = Mosquitto::start()?;
    let mock = MockOpenAi::start(script()).await?;
    let instance = |name: &str| {
        format!(
            "store:\n  type: redis\n  url: \"{}\"\n  key_prefix: \"fleet:\"\n  instance_id: {name}\n\
             mqtt:\n  enabled: true\n  udp_port: 0\n  udp_host: 127.0.0.1\n  broker: \"{}\"\n",
            redis.url(),
            broker.url()
        )
    };
    let a = TestServer::start_with_server_yaml(&mock, "", &instance("a")).await?;
    let b = TestServer::start_with_server_yaml(&mock, "", &instance("b")).await?;
    let port_of = |server: &TestServer| server.server.mqtt_addrs.map(|(_, udp)| udp.port()).unwrap_or(0);
    let (port_a, port_b) = (port_of(&a), port_of(&b));

    // Each device's OTA check (at either instance) points it at the broker.
    let mut configs = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let device_id = format!("02:f1:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let server = if i % 2 == 0 { &a } else { &b };
        let (cfg, body) =
            ota_config_with(server, &device_id, &format!("00000000-0000-4000-8000-{i:012x}"), true).await?;
        assert_eq!(body["mqtt"]["endpoint"], format!("127.0.0.1:{}", broker.port));
        configs.push(cfg);
    }
    let started = Instant::now();
    let mut devices = connect_all(configs).await?;
    let on_a = devices.iter().filter(|d| served_by(d) == port_a).count();
    let on_b = devices.iter().filter(|d| served_by(d) == port_b).count();
    eprintln!("{DEVICES} devices connected through mosquitto in {:?}: {on_a} on a, {on_b} on b", started.elapsed());
    assert_eq!(on_a + on_b, DEVICES, "every device is served by one instance");
    assert!(on_a > 0 && on_b > 0, "both instances serve part of the devices: {on_a} / {on_b}");

    // A whole session through the broker: a spoken turn, a device tool call, goodbye.
    let mut first = devices.remove(0);
    spoken_turn(&mut first, &mock).await?;
    volume_tool_call(&mut first).await?;
    goodbye(first).await?;

    // Instance a stops: its devices are told goodbye, say hello again and are served by b.
    let (moved, stayed): (Vec<_>, Vec<_>) = devices.into_iter().partition(|d| served_by(d) == port_a);
    a.server.shutdown().await;
    let mut configs = Vec::with_capacity(moved.len());
    for mut device in moved {
        let mut told = false;
        while let Some((_, event)) = device.next_event(Duration::from_secs(5)).await {
            if matches!(event, SimEvent::Closed(_)) {
                told = true;
                break;
            }
        }
        assert!(told, "a device of the stopped instance is told goodbye");
        configs.push(device.config().clone());
        device.close_abruptly().await;
    }
    let mut again = connect_all(configs).await?;
    assert!(again.iter().all(|d| served_by(d) == port_b), "every device of a is now served by b");
    let mut one = again.pop().expect("a device moved");
    mock.set_reply("🙂 Still here.");
    one.detect("are you still there").await?;
    assert_eq!(one.collect_reply(REPLY_WAIT).await?.sentences, ["Still here"]);
    for device in again.into_iter().chain(stayed).chain([one]) {
        device.close_abruptly().await;
    }
    b.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_audio_channel_goes_quiet_ends_with_our_goodbye() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(script()).await?;
    let server = TestServer::start_with_server_yaml(
        &mock,
        "",
        "mqtt:\n  enabled: true\n  port: 0\n  udp_port: 0\nlimits:\n  udp_channel_timeout: 2\n",
    )
    .await?;
    let (cfg, _) = ota_config(&server, "aa:bb:cc:00:0e:09", CLIENT).await?;
    let mut device = SimDevice::connect(cfg).await?;
    let quiet_from = Instant::now();
    let mut goodbye = None;
    while let Some((at, event)) = device.next_event(Duration::from_secs(10)).await {
        match event {
            SimEvent::Json(v) if v["type"] == "goodbye" => goodbye = Some((at, v)),
            SimEvent::Closed(_) => break,
            _ => {}
        }
    }
    let (at, goodbye) = goodbye.expect("our goodbye after the channel timeout");
    assert_eq!(goodbye["session_id"], device.session_id());
    let quiet = at.duration_since(quiet_from);
    assert!(quiet >= Duration::from_millis(1900) && quiet < Duration::from_secs(5), "goodbye after {quiet:?}");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}
