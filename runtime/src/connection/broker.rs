//! Fleet mode of the MQTT transport: devices connect to an external broker (mosquitto, EMQX), and
//! every server instance joins it as a client (`mqtt.broker`).
//!
//! Each device publishes on `device-server/<mac_>` (the OTA block says so), and the instances
//! share that topic: `$share/<group>/device-server/+` hands each message to one of them. The
//! device registry in the store (Redis) decides which instance serves a device: the one holding
//! its session. A message that reaches another instance is forwarded to the holder on
//! `xiaozhi/instance/<holder>/<mac_>`, which each instance subscribes to alone. A `hello` for a
//! device no live instance holds starts a session where it lands. An instance is live while its
//! heartbeat key (refreshed every [`HEARTBEAT`], kept [`HEARTBEAT_TTL`]) is in the store; one that
//! stops says goodbye to its devices and drops the key, so their next `hello` lands elsewhere.
//!
//! Our messages are published on `devices/p2p/<mac_>`. Current firmware never subscribes, so the
//! broker must deliver that topic to the device unasked (EMQX's auto-subscription can); a stock
//! mosquitto delivers only to firmware before 2025, which subscribed to `subscribe_topic`.
//! Per device this is the same [`DeviceLink`] as on the built-in endpoint, so a session, its UDP
//! channel and its goodbye behave the same.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::mqtt::{DeviceLink, Downlink, Endpoint, StartSession};
use super::udp::UdpEndpoint;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::mqtt::{self as identity, ClientIdentity};
use crate::store::Store;

/// How often an instance refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long a heartbeat lasts: an instance that stopped without a word counts as gone after it.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How long a looked-up holder is trusted before the store is asked again.
const HOLDER_CACHE: Duration = Duration::from_secs(2);
/// Most holders cached (the cache is emptied when full).
const HOLDER_CACHE_ENTRIES: usize = 10_000;
/// How often idle sessions are looked for.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The store key of an instance's heartbeat.
pub fn heartbeat_key(instance: &str) -> String {
    format!("instance/{}/alive", crate::store::segment(instance))
}

/// An instance name as one topic level (no `/`, `+`, `#`).
fn topic_level(instance: &str) -> String {
    instance.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.:".contains(c) { c } else { '_' }).collect()
}

/// Joins the broker and serves the devices' sessions until `shutdown`.
pub async fn serve(
    config: watch::Receiver<Arc<Config>>,
    udp: Arc<UdpEndpoint>,
    metrics: Arc<Metrics>,
    start: StartSession,
    store: Arc<dyn Store>,
    instance: Arc<str>,
    shutdown: CancellationToken,
) {
    let current = Arc::clone(&config.borrow());
    let Some(Ok((host, port))) = current.mqtt.broker_address() else { return };
    let me = topic_level(&instance);
    let mut options = MqttOptions::new(format!("xiaozhi-server-{me}"), host.clone(), port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(current.limits.mqtt_packet_bytes, super::MAX_MESSAGE + 1024);
    if !current.mqtt.broker_username.is_empty() {
        options.set_credentials(current.mqtt.broker_username.clone(), current.mqtt.broker_password.clone());
    }
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let endpoint = Arc::new(Endpoint::new(config, udp, metrics, start, shutdown.clone(), Arc::new(Semaphore::new(0))));
    let udp_host = current.mqtt.udp_host.trim().to_owned();
    let local_addr = SocketAddr::new(udp_host.parse().unwrap_or([127, 0, 0, 1].into()), 0);
    let mut fleet = Fleet {
        endpoint,
        client,
        store,
        instance,
        me,
        group: current.mqtt.share_group.trim().to_owned(),
        udp_host,
        local_addr,
        links: HashMap::new(),
        holders: HashMap::new(),
    };
    tracing::info!("MQTT fleet mode: joined the broker {host}:{port} as instance {}", fleet.instance);
    fleet.run(eventloop, &shutdown).await;
}

struct Fleet {
    endpoint: Arc<Endpoint>,
    client: AsyncClient,
    store: Arc<dyn Store>,
    /// This instance's name in the registry.
    instance: Arc<str>,
    /// The same, as a topic level.
    me: String,
    group: String,
    udp_host: String,
    local_addr: SocketAddr,
    /// The devices served here, by device id (only those with a session are kept).
    links: HashMap<String, DeviceLink>,
    /// Recently found holders by device id, and when they were found.
    holders: HashMap<String, (String, Instant)>,
}

/// Where a device's message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The shared topic: it may be another instance's device.
    Shared,
    /// Forwarded to us by another instance: ours.
    Forwarded,
}

/// What the broker connection brings.
enum Incoming {
    /// Connected (again): subscribe.
    Connected,
    /// A message on one of our subscriptions.
    Publish(String, Bytes),
}

/// Polls the broker connection in its own task (its `poll` is not documented as cancel-safe, so it
/// is never raced against other futures) and hands over what arrives. rumqttc reconnects on the
/// next poll after an error. Ends once the DISCONNECT we asked for is out, or when `incoming` is
/// closed.
async fn pump(mut eventloop: EventLoop, incoming: mpsc::Sender<Incoming>) {
    loop {
        let event = match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => Incoming::Connected,
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => Incoming::Publish(publish.topic, publish.payload),
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                if incoming.is_closed() {
                    return;
                }
                tracing::warn!("MQTT fleet: the broker connection failed: {e}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if incoming.send(event).await.is_err() {
            return;
        }
    }
}

impl Fleet {
    async fn run(&mut self, eventloop: EventLoop, shutdown: &CancellationToken) {
        let (incoming_tx, mut incoming) = mpsc::channel(1024);
        let mut pump = tokio::spawn(pump(eventloop, incoming_tx));
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut idle = tokio::time::interval(IDLE_CHECK);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {
                    let key = heartbeat_key(&self.instance);
                    if let Err(e) = self.store.set(&key, b"1", Some(HEARTBEAT_TTL)).await {
                        tracing::warn!("MQTT fleet: the heartbeat was not written: {e}");
                    }
                }
                _ = idle.tick() => {
                    for link in self.links.values_mut() {
                        link.check_idle();
                    }
                    self.links.retain(|_, link| link.in_session());
                }
                event = incoming.recv() => match event {
                    Some(Incoming::Connected) => self.subscribe(),
                    Some(Incoming::Publish(topic, payload)) => self.on_publish(&topic, &payload).await,
                    None => break,
                },
            }
        }
        // Stopping: every device served here is told, and the heartbeat goes, so that the
        // devices' next hello lands on another instance.
        for link in self.links.values_mut() {
            link.end_session(true);
        }
        let _ = self.store.delete(&heartbeat_key(&self.instance)).await;
        // The goodbyes are queued before the DISCONNECT: the pump ends once it is out.
        let _ = self.client.try_disconnect();
        drop(incoming);
        if tokio::time::timeout(Duration::from_secs(1), &mut pump).await.is_err() {
            pump.abort();
        }
    }

    fn subscribe(&self) {
        let shared = format!("$share/{}/{}/+", self.group, identity::PUBLISH_TOPIC);
        let own = format!("xiaozhi/instance/{}/+", self.me);
        for topic in [shared, own] {
            if let Err(e) = self.client.try_subscribe(topic.clone(), QoS::AtMostOnce) {
                tracing::warn!("MQTT fleet: cannot subscribe to {topic}: {e}");
            }
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &Bytes) {
        let own_prefix = format!("xiaozhi/instance/{}/", self.me);
        let (via, level) = if let Some(level) = topic.strip_prefix(&own_prefix) {
            (Via::Forwarded, level)
        } else if let Some(level) = topic.strip_prefix(identity::PUBLISH_TOPIC).and_then(|t| t.strip_prefix('/')) {
            (Via::Shared, level)
        } else {
            tracing::debug!(topic, "MQTT fleet: a message on another topic is ignored");
            return;
        };
        let Some(device_id) = identity::device_of_topic_level(level) else {
            tracing::debug!(topic, "MQTT fleet: a topic that names no device");
            return;
        };
        if let Some(link) = self.links.get_mut(&device_id)
            && link.in_session()
        {
            link.on_message(payload);
            return;
        }
        let is_hello = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .is_some_and(|v| v.get("type").and_then(serde_json::Value::as_str) == Some("hello"));
        if via == Via::Shared
            && let Some(holder) = self.live_holder(&device_id, is_hello).await
            && holder != *self.instance
        {
            let to = format!("xiaozhi/instance/{}/{level}", topic_level(&holder));
            if self.client.try_publish(to, QoS::AtMostOnce, false, payload.to_vec()).is_err() {
                tracing::warn!(device = %device_id, "MQTT fleet: the forward queue is full; a message is lost");
            }
            return;
        }
        // No live instance holds it: a hello starts the session here; anything else is stale.
        if !is_hello {
            tracing::debug!(device = %device_id, "MQTT fleet: a message outside a session is ignored");
            return;
        }
        // Registered before the session starts, so that the device's next messages, wherever they
        // land, are forwarded here (the session refreshes the entry while it lasts).
        let ttl = crate::session::REGISTRY_TTL;
        if let Err(e) = crate::store::register_device(self.store.as_ref(), &device_id, &self.instance, ttl).await {
            tracing::warn!(device = %device_id, "MQTT fleet: the registry was not written ({e}); messages landing elsewhere are lost");
        }
        let me = Arc::clone(&self.instance);
        self.remember_holder(&device_id, &me);
        let who = ClientIdentity { device_id: device_id.clone(), client_id: String::new() };
        let mut link = DeviceLink::new(
            Arc::clone(&self.endpoint),
            who,
            Downlink::Broker(self.client.clone()),
            self.udp_host.clone(),
            self.local_addr,
        );
        link.on_message(payload);
        self.links.insert(device_id, link);
    }

    /// The live instance holding `device_id`'s session, if any. A holder found is trusted for
    /// [`HOLDER_CACHE`], except for a `hello` (`fresh`), which always asks the store: it may follow
    /// the holder's end.
    async fn live_holder(&mut self, device_id: &str, fresh: bool) -> Option<String> {
        if !fresh
            && let Some((holder, asked)) = self.holders.get(device_id)
            && asked.elapsed() < HOLDER_CACHE
        {
            return Some(holder.clone());
        }
        let holder = self.read_live_holder(device_id).await.unwrap_or_else(|e| {
            tracing::warn!("MQTT fleet: the registry cannot be read ({e}); serving here");
            None
        });
        match &holder {
            Some(holder) => self.remember_holder(device_id, holder),
            None => {
                self.holders.remove(device_id);
            }
        }
        holder
    }

    /// The registered holder of `device_id` when it is this instance or one whose heartbeat lives.
    async fn read_live_holder(&self, device_id: &str) -> Result<Option<String>, crate::store::StoreError> {
        let Some(holder) = crate::store::device_instance(self.store.as_ref(), device_id).await? else {
            return Ok(None);
        };
        let live = holder == *self.instance || self.store.get(&heartbeat_key(&holder)).await?.is_some();
        Ok(live.then_some(holder))
    }

    /// Caches a holder found (at most [`HOLDER_CACHE_ENTRIES`]; the cache is emptied when full).
    fn remember_holder(&mut self, device_id: &str, holder: &str) {
        if self.holders.len() >= HOLDER_CACHE_ENTRIES {
            self.holders.clear();
        }
        self.holders.insert(device_id.to_owned(), (holder.to_owned(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_become_one_topic_level() {
        assert_eq!(topic_level("host-1:8000"), "host-1:8000");
        assert_eq!(topic_level("a/b+c#d e"), "a_b_c_d_e");
        assert_eq!(heartbeat_key("a/b"), "instance/a%2Fb/alive");
    }
}
