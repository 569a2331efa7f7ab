//! Real headless Chromium for the console's page tests, driven over WebDriver (`chromedriver`,
//! Debian's `chromium` and `chromium-driver`, which `tests/run.sh` installs) with `fantoccini`.
//! `chromedriver` runs as the leader of its own process group, so it and every Chromium process
//! it starts die with the test ([`crate::python::Group`]); their profile and temporary files live
//! in a temporary directory of the [`Browser`], removed after them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::python::Group;

/// How long [`Browser::wait_text`] and friends wait for the page.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    // Dropped in this order: the driver's process group is killed, then its files are removed.
    _driver: Group,
    _files: tempfile::TempDir,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a headless Chromium with `args` added
    /// to the ones every test needs.
    pub async fn start(args: &[String]) -> anyhow::Result<Self> {
        let driver = on_path("chromedriver")
            .context("chromedriver is not installed: apt-get install chromium chromium-driver (tests/run.sh does)")?;
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(on_path)
            .context("chromium is not installed: apt-get install chromium chromium-driver (tests/run.sh does)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Chromium's profile, its shared-memory files (--disable-dev-shm-usage puts them in
        // TMPDIR), what it and its audio client write under HOME and the XDG directories, and
        // chromedriver's own scratch space: all in one directory of ours (mode 0700).
        let files = tempfile::tempdir()?;
        let mut command = tokio::process::Command::new(&driver);
        command.arg(format!("--port={port}"));
        for variable in ["TMPDIR", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"] {
            command.env(variable, files.path());
        }
        let group = Group::spawn(&mut command)?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        loop {
            let ready = http.get(format!("{url}/status")).send().await.ok();
            let ready = match ready {
                Some(response) => response.json::<Value>().await.ok().is_some_and(|s| s["value"]["ready"] == true),
                None => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver on port {port} did not get ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut chrome_args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,900",
            "--autoplay-policy=no-user-gesture-required",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        chrome_args.push(format!("--user-data-dir={}", files.path().join("profile").display()));
        chrome_args.extend(args.iter().cloned());
        let mut capabilities = serde_json::Map::new();
        capabilities
            .insert("goog:chromeOptions".into(), json!({"binary": chromium.to_string_lossy(), "args": chrome_args}));
        capabilities.insert("unhandledPromptBehavior".into(), json!("ignore"));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
            .with_context(|| format!("starting {} through chromedriver", chromium.display()))?;
        Ok(Self { client, _driver: group, _files: files })
    }

    /// Waits for the element `css` and returns it.
    pub async fn element(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css} within {PAGE_WAIT:?}"))
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + PAGE_WAIT;
        let mut last = String::new();
        loop {
            if let Ok(found) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = found.text().await
            {
                if ok(&text) {
                    return Ok(text);
                }
                last = text;
            }
            if Instant::now() > deadline {
                bail!("{css} never read as expected within {PAGE_WAIT:?}; last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field `css` (emptied first).
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let field = self.element(css).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.element(css).await?.click().await?;
        Ok(())
    }

    /// Accepts the `confirm()` dialog the last click opened.
    pub async fn accept(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + PAGE_WAIT;
        while let Err(e) = self.client.accept_alert().await {
            if Instant::now() > deadline {
                bail!("no dialog to accept: {e}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Saves a screenshot of the page as `<dir>/<name>.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}.png")), self.client.screenshot().await?)?;
        Ok(())
    }

    /// Ends the browser session (Chromium quits); chromedriver is killed when `self` drops.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
