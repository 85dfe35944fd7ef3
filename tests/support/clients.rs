//! The real client stacks of a node, driven by the tests as child processes: grpc-go dialled
//! as kubelets dial (tests/clients/go), grpc C-core through Debian's and PyPI's grpcio
//! (tests/clients/grpcio_client.py). tests/clients/install.sh installs and builds them into
//! target/clients/. Each client takes one JSON request a line and answers one JSON line;
//! messages travel as raw protobuf bytes, so the stack's own transport does all the work.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A client stack as a node runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// grpc-go with the socket path as target and a context dialer: kubelets 1.24–1.30 and
    /// crictl of those lines; `:authority` is the socket path.
    GoKubeletLegacy,
    /// grpc-go with `WithAuthority("localhost")`: kubelets 1.31 and later.
    GoKubelet,
    /// Debian's python3-grpcio (C-core 1.51), target `unix:PATH`.
    GrpcioDebian,
    /// PyPI's current grpcio (C-core), target `unix:PATH`: a percent-encoded path as authority.
    GrpcioPypi,
    /// Debian's grpcio with the socket path as authority, as grpc-java sends it.
    GrpcioPathAuthority,
}

impl Stack {
    pub const ALL: [Stack; 5] = [
        Stack::GoKubeletLegacy,
        Stack::GoKubelet,
        Stack::GrpcioDebian,
        Stack::GrpcioPypi,
        Stack::GrpcioPathAuthority,
    ];

    fn command(self, socket: &Path) -> Command {
        let dir = clients_dir();
        let python = |interpreter: PathBuf| {
            let mut command = Command::new(interpreter);
            command
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/clients/grpcio_client.py"
                ))
                .arg("--socket")
                .arg(socket);
            command
        };
        let go = |dial: &str| {
            let mut command = Command::new(dir.join("cri-go-client"));
            command.arg("-socket").arg(socket).arg("-dial").arg(dial);
            command
        };
        match self {
            Stack::GoKubeletLegacy => go("legacy"),
            Stack::GoKubelet => go("localhost"),
            Stack::GrpcioDebian => python("/usr/bin/python3".into()),
            Stack::GrpcioPypi => python(dir.join("venv/bin/python")),
            Stack::GrpcioPathAuthority => {
                let mut command = python("/usr/bin/python3".into());
                command.arg("--authority").arg(socket);
                command
            }
        }
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients")
}

/// How one call ended, as the client stack saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: i64,
    pub message: String,
    pub response: Bytes,
    pub responses: Vec<Bytes>,
}

/// What a load run saw.
#[derive(Debug)]
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    pub errors: Value,
    pub max: Duration,
}

/// One client process on one connection (grpc channel).
pub struct Client {
    pub stack: Stack,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    pub fn spawn(stack: Stack, socket: &Path) -> Client {
        Client::spawn_with(stack, socket, &[])
    }

    /// With extra flags for the client, e.g. `["-keepalive", "10s"]`.
    pub fn spawn_with(stack: Stack, socket: &Path, extra: &[&str]) -> Client {
        let mut child = stack
            .command(socket)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("{stack:?} client: {err} (tests/clients/install.sh installs the clients)")
            });
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            stack,
            child,
            stdin,
            lines,
        }
    }

    /// Sends one request line; its answer is read with [`Client::answer`].
    pub async fn send(&mut self, request: Value) {
        let mut line = request.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    pub async fn answer(&mut self) -> Value {
        let line = self.lines.next_line().await.unwrap();
        let line = line.unwrap_or_else(|| panic!("{:?} client exited", self.stack));
        serde_json::from_str(&line).unwrap()
    }

    /// One unary call with the message `request`.
    pub async fn call(&mut self, method: &str, request: &impl prost::Message) -> Reply {
        self.call_with(method, request, Duration::from_secs(10), json!({}))
            .await
    }

    pub async fn call_with(
        &mut self,
        method: &str,
        request: &impl prost::Message,
        timeout: Duration,
        metadata: Value,
    ) -> Reply {
        self.send(json!({
            "op": "call",
            "method": method,
            "request": encode(request),
            "timeout_ms": timeout.as_millis() as u64,
            "metadata": metadata,
        }))
        .await;
        reply(self.answer().await)
    }

    /// Starts a server-streaming call that ends after `count` messages (or its status); read
    /// the answer with [`Client::answer`] and [`reply`].
    pub async fn start_stream(
        &mut self,
        method: &str,
        request: &impl prost::Message,
        count: usize,
        timeout: Duration,
    ) {
        self.send(json!({
            "op": "stream",
            "method": method,
            "request": encode(request),
            "count": count,
            "timeout_ms": timeout.as_millis() as u64,
        }))
        .await;
    }

    /// `callers` concurrent callers of `method` for `duration`, on this one connection.
    pub async fn load(
        &mut self,
        method: &str,
        request: &impl prost::Message,
        callers: usize,
        duration: Duration,
    ) -> Load {
        self.send(json!({
            "op": "load",
            "method": method,
            "request": encode(request),
            "callers": callers,
            "duration_ms": duration.as_millis() as u64,
            "timeout_ms": 10_000,
        }))
        .await;
        let answer = self.answer().await;
        Load {
            ok: answer["ok"].as_u64().unwrap_or(0),
            failed: answer["failed"].as_u64().unwrap_or(0),
            errors: answer["errors"].clone(),
            max: Duration::from_secs_f64(answer["max_ms"].as_f64().unwrap_or(0.0) / 1000.0),
        }
    }

    /// The connection idles for `duration` (keepalive pings go on).
    pub async fn idle(&mut self, duration: Duration) {
        self.send(json!({"op": "sleep", "duration_ms": duration.as_millis() as u64}))
            .await;
        self.answer().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn encode(message: &impl prost::Message) -> String {
    base64::engine::general_purpose::STANDARD.encode(message.encode_to_vec())
}

fn decode(value: &Value) -> Bytes {
    value
        .as_str()
        .map(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
                .into()
        })
        .unwrap_or_default()
}

/// A client's answer line as a [`Reply`].
pub fn reply(answer: Value) -> Reply {
    Reply {
        code: answer["code"].as_i64().unwrap_or(-1),
        message: answer["message"].as_str().unwrap_or_default().to_string(),
        response: decode(&answer["response"]),
        responses: answer["responses"]
            .as_array()
            .map(|all| all.iter().map(decode).collect())
            .unwrap_or_default(),
    }
}
