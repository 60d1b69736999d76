//! `netready collect` as a real process inside a network namespace (a test node's, so a
//! `netready serve` there reaches it on loopback), and an HTTP client nobody here wrote
//! (Python's `http.client`) to talk to it from inside that namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Where the collector listens inside its namespace.
pub const ADDR: &str = "127.0.0.1:8080";

/// A running `netready collect`; stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Collector {
    bin: PathBuf,
    netns: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Collector {
    /// Starts `bin collect --listen 127.0.0.1:8080 --dir <dir>/records` inside `netns`
    /// (its `lo` is brought up) and waits until `/healthz` answers.
    pub async fn start(bin: &Path, netns: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        netready_local::netlink::Nl::open(&netready_netns::Netns::open(netns)?)
            .await?
            .up("lo")
            .await?;
        let mut me = Collector {
            bin: bin.to_owned(),
            netns: netns.to_owned(),
            dir: dir.join("records"),
            log: dir.join("collect.log"),
            child: None,
        };
        me.spawn().await?;
        Ok(me)
    }

    /// The URL a `netready serve` in the same namespace forwards to.
    pub fn url(&self) -> String {
        format!("http://{ADDR}")
    }

    /// The directory of the runs' files.
    pub fn records_dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far (every start appends).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts it again on the same directory (after [`Collector::kill`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "still running");
        self.spawn().await
    }

    /// An HTTP request to it, from inside its namespace, by Python's `http.client`.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
        http(&self.netns, method, &format!("http://{ADDR}{path}"), body)
    }

    /// Sends SIGTERM and waits up to `within`; returns its exit status.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        crate::terminate(&mut child, within)?
            .with_context(|| format!("collector did not exit within {within:?} of SIGTERM"))
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&self.bin)
            .args(["collect", "--listen", ADDR, "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} collect", self.bin.display()))?;
        self.child = Some(child);
        let ns = netready_netns::Netns::open(&self.netns)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("collector exited ({status}):\n{}", self.log());
            }
            // A connection made inside the namespace: the collector accepts once it has
            // indexed its files.
            let answered = ns
                .run(|| std::net::TcpStream::connect(ADDR).is_ok())
                .unwrap_or(false);
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("collector not listening after 20 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(Duration::from_secs(5));
        }
    }
}

const CLIENT: &str = r#"
import sys, http.client, urllib.parse
method, url = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(url)
body = sys.stdin.buffer.read()
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
c.request(method, u.path + ("?" + u.query if u.query else ""), body=body if method in ("POST", "PUT") else None)
r = c.getresponse()
sys.stdout.buffer.write(b"%d\n" % r.status + r.read())
"#;

/// `method url` with `body`, sent by Python's `http.client` from inside the namespace at
/// `netns`; the status and the body of the answer.
pub fn http(netns: &Path, method: &str, url: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    use std::io::Write as _;
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "python3", "-c", CLIENT, method, url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 inside the namespace")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let body = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    anyhow::ensure!(
        out.status.success(),
        "python3 {method} {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, rest) = text.split_once('\n').context("no status line")?;
    Ok((status.parse()?, rest.to_owned()))
}
