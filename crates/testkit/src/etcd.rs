//! A real etcd (Debian's `etcd-server`) on free loopback ports with its own data dir,
//! which a test can stop and start again (same ports, same data) and compact; served
//! over TLS requiring client certificates ([`EtcdServer::launch_tls`]) or with
//! authentication enabled ([`EtcdServer::enable_auth`]) when a test asks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd member; killed on drop, its data dir removed with it.
pub struct EtcdServer {
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<EtcdTls>,
}

/// TLS for a test etcd, PEM: its certificate (for 127.0.0.1) and key, the CA whose
/// client certificates it requires (`--client-cert-auth`), and what the helper's own
/// `etcdctl` calls ([`EtcdServer::enable_auth`]) use: the CA of `cert` and a client
/// certificate with its key.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub ca: String,
    pub helper_cert: String,
    pub helper_key: String,
}

impl EtcdServer {
    /// Starts a new etcd and waits until it answers `/health`; panics if it cannot.
    pub fn launch() -> Self {
        Self::launch_with(None)
    }

    /// Starts a new etcd serving clients over TLS only, requiring a client certificate
    /// signed by `tls.client_ca`; waits until it serves.
    pub fn launch_tls(tls: EtcdTls) -> Self {
        Self::launch_with(Some(tls))
    }

    fn launch_with(tls: Option<EtcdTls>) -> Self {
        // A free port can be taken by someone else before etcd binds it; then etcd exits
        // at once and a fresh pair of ports is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = Self {
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                dir: tempfile::tempdir().expect("temp dir for etcd"),
                child: None,
                tls: tls.clone(),
            };
            if server.client_port == server.peer_port {
                continue;
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < 3 => eprintln!("etcd did not start, retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// Adds the user `root` with `password` and enables authentication (with the
    /// `etcdctl` of `etcd-client`, over TLS with the helper's certificate when the
    /// etcd has TLS); from then on every request needs a user.
    pub fn enable_auth(&self, password: &str) {
        let mut tls_args = Vec::new();
        if let Some(tls) = &self.tls {
            let file = |name: &str, content: &str| {
                let path = self.dir.path().join(name);
                std::fs::write(&path, content).expect("etcdctl TLS file");
                path.display().to_string()
            };
            tls_args = vec![
                format!("--cacert={}", file("helper-ca.crt", &tls.ca)),
                format!("--cert={}", file("helper.crt", &tls.helper_cert)),
                format!("--key={}", file("helper.key", &tls.helper_key)),
            ];
        }
        for args in [
            vec!["user", "add", &format!("root:{password}")],
            vec!["auth", "enable"],
        ] {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.client_url()])
                .args(&tls_args)
                .args(&args)
                .output()
                .expect("etcdctl is not installed: run `cargo xtask test`");
            assert!(
                out.status.success(),
                "etcdctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `etcd://127.0.0.1:PORT`, as `portico --store` takes it.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// Stops etcd (SIGKILL, as a crash); the data dir is kept for [`EtcdServer::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data after [`EtcdServer::stop`]; waits
    /// until it answers `/health`.
    pub fn start(&mut self) {
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// Whether the etcd process is alive (it may not answer yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let binary = etcd_binary();
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let mut command = Command::new(binary);
        if let Some(tls) = &self.tls {
            let file = |name: &str, content: &str| {
                let path = self.dir.path().join(name);
                std::fs::write(&path, content).expect("etcd TLS file");
                format!("{}", path.display())
            };
            command
                .arg(format!("--cert-file={}", file("server.crt", &tls.cert)))
                .arg(format!("--key-file={}", file("server.key", &tls.key)))
                .arg(format!(
                    "--trusted-ca-file={}",
                    file("client-ca.crt", &tls.client_ca)
                ))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("etcd exited with {status}: {}", self.log()));
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.stop();
                return Err(format!("etcd did not become healthy: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain HTTP/1.1 GET of `/health`, so the helper needs no async runtime; over
    /// TLS, etcd's own log saying it serves clients (the helper has no client
    /// certificate).
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            return std::net::TcpStream::connect(self.endpoint()).is_ok()
                && self.log().contains("serving client requests");
        }
        let Ok(mut stream) = std::net::TcpStream::connect(self.endpoint()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.endpoint()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Compacts the history up to `revision` (with the `etcdctl` of `etcd-client`).
    pub fn compact(&self, revision: i64) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoint(),
                "compact",
                &revision.to_string(),
            ])
            .output()
            .expect("etcdctl is not installed: run `cargo xtask test`");
        assert!(
            out.status.success(),
            "etcdctl compact failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// Debian's `etcd-server` puts etcd in `/usr/bin`; anything else on `PATH` works too.
fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("etcd is not installed: run `cargo xtask test`, which installs etcd-server")
        })
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
