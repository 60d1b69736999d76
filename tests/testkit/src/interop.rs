//! CRI clients nobody here wrote, for interop tests: Debian's grpc-go dialing a socket path as
//! kubelet v1.28 does (`tests/interop/cri-go`), and Python grpcio (`tests/interop/
//! grpcio_client.py`). Both speak the same line protocol: one JSON call per line in, one reply
//! per line out, messages as hex bytes the test encodes and decodes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context as _};

/// `tests/interop` in this repository.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop")
}

/// The Go client, built once per source change under the build's target directory with
/// Debian's `golang-go` and `golang-google-grpc-dev` (GOPATH mode: no module download).
pub fn go_client() -> anyhow::Result<PathBuf> {
    let src = dir().join("cri-go/main.go");
    // Test binaries live in <target>/<profile>/deps.
    let exe = std::env::current_exe()?;
    let out_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a target directory")?
        .join("interop");
    std::fs::create_dir_all(&out_dir)?;
    let bin = out_dir.join("cri-go");
    let fresh = |b: &Path| -> Option<bool> {
        Some(
            std::fs::metadata(b).ok()?.modified().ok()?
                >= std::fs::metadata(&src).ok()?.modified().ok()?,
        )
    };
    // Tests are threads of one process (cargo test) or processes of their own (nextest): one
    // build at a time in this process, each to a name of its own, renamed into place.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if fresh(&bin) == Some(true) {
        return Ok(bin);
    }
    let tmp = tempfile::Builder::new()
        .prefix("cri-go.")
        .tempfile_in(&out_dir)?
        .into_temp_path();
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out_dir.join("go-cache"))
        .env("GOFLAGS", "")
        .output()
        .context("running go (golang-go; scripts/install-deps.sh installs it)")?;
    if !output.status.success() {
        bail!(
            "go build {}: {}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    tmp.persist(&bin)?;
    Ok(bin)
}

/// The Python that has the interop packages: the venv `scripts/install-deps.sh` makes
/// (`NETREADY_TEST_VENV`, default `/opt/netready-test/venv`), or `python3` if there is none.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("NETREADY_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/netready-test/venv"));
    let py = venv.join("bin/python3");
    if py.exists() {
        py
    } else {
        PathBuf::from("python3")
    }
}

/// One call's outcome as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The status message.
    pub message: String,
    /// The reply message (empty on error).
    pub resp: Vec<u8>,
    /// The call's time as the client saw it, where the client says (grpc-go).
    pub elapsed: Option<std::time::Duration>,
}

/// A client process that makes one call per [`LineClient::call`]; killed when dropped.
#[derive(Debug)]
pub struct LineClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    what: &'static str,
}

impl LineClient {
    /// The grpc-go client, connected to `socket` as kubelet v1.28 connects.
    pub fn go(socket: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(go_client()?);
        cmd.arg(socket);
        Self::spawn(cmd, "grpc-go")
    }

    /// The Python grpcio client, on `unix:<socket>`.
    pub fn grpcio(socket: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(python());
        cmd.arg(dir().join("grpcio_client.py")).arg(socket);
        Self::spawn(cmd, "grpcio")
    }

    fn spawn(mut cmd: Command, what: &'static str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {what} client"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(LineClient {
            child,
            stdin,
            stdout,
            what,
        })
    }

    /// Calls `method` (a full gRPC path) with an encoded request message.
    pub fn call(&mut self, method: &str, req: &[u8]) -> anyhow::Result<Reply> {
        let line = serde_json::json!({"method": method, "req": hex(req)});
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut out = String::new();
        if self.stdout.read_line(&mut out)? == 0 {
            bail!("the {} client exited during {method}", self.what);
        }
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("{} client reply {out:?}", self.what))?;
        Ok(Reply {
            code: tonic::Code::from_i32(v["code"].as_i64().unwrap_or(2) as i32),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            resp: unhex(v["resp"].as_str().unwrap_or_default())?,
            elapsed: v["elapsed_ns"]
                .as_u64()
                .map(std::time::Duration::from_nanos),
        })
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Bytes of a hex string.
pub fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    Ok(hex::decode(s)?)
}
