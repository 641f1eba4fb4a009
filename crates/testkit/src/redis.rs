//! A real Redis (Debian's `redis-server`) on a free loopback port with its own dir and
//! no persistence (`--save '' --appendonly no`), so a restart brings it back empty, as a
//! Redis without persistence comes back after a crash; a test can stop and start it
//! again, require a password, and cut every client's connection without a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis server; killed on drop, its dir removed with it.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a new Redis and waits until it answers `PING`; panics if it cannot.
    pub fn launch() -> Self {
        Self::launch_with(None)
    }

    /// Starts a new Redis whose default user needs `password` (`--requirepass`).
    pub fn launch_with_password(password: &str) -> Self {
        Self::launch_with(Some(password.to_owned()))
    }

    fn launch_with(password: Option<String>) -> Self {
        // A free port can be taken by someone else before Redis binds it; then Redis
        // exits at once and another port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = Self {
                port: crate::free_port(),
                dir: tempfile::tempdir().expect("temp dir for redis"),
                child: None,
                password: password.clone(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < 3 => eprintln!("redis did not start, retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://[:password@]127.0.0.1:PORT`, as `portico --store` takes it (append a
    /// root such as `/c1` to give a deployment its own keys).
    pub fn store_url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@{}", self.endpoint()),
            None => format!("redis://{}", self.endpoint()),
        }
    }

    /// Stops Redis (SIGKILL, as a crash); without persistence its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port after [`RedisServer::stop`], empty; waits
    /// until it answers.
    pub fn start(&mut self) {
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// Whether the Redis process is alive (it may not answer yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Closes every client connection (`CLIENT KILL TYPE normal`) while the server and
    /// its data stay: a network blip rather than a restart.
    pub fn kill_clients(&self) {
        let answer = self.command("CLIENT KILL TYPE normal");
        assert!(answer.starts_with(':'), "CLIENT KILL answered {answer:?}");
    }

    /// Runs one inline command (authenticated when the server needs it) and answers
    /// the first line of its raw reply (`+OK`, `:1`, `$3`, `*2`, `-ERR …`).
    pub fn command(&self, command: &str) -> String {
        self.reply(command)
            .split("\r\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every key in the server (`KEYS *`), sorted.
    pub fn keys(&self) -> Vec<String> {
        // An array reply: `*N`, then `$len` and the key for each; keys are printable.
        let reply = self.reply("KEYS *");
        let mut keys: Vec<String> = reply
            .split("\r\n")
            .skip(1)
            .filter(|line| !line.starts_with('$') && !line.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// The raw reply to `command` (after the one to `AUTH`, before the one to `QUIT`).
    fn reply(&self, command: &str) -> String {
        let mut stream = TcpStream::connect(self.endpoint()).expect("redis is not up");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = String::new();
        if let Some(password) = &self.password {
            request.push_str(&format!("AUTH {password}\r\n"));
        }
        request.push_str(command);
        request.push_str("\r\nQUIT\r\n");
        stream
            .write_all(request.as_bytes())
            .expect("write to redis");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if self.password.is_some() {
            answer = answer
                .split_once("\r\n")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default();
        }
        answer.strip_suffix("+OK\r\n").unwrap_or(&answer).to_owned()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis is already running");
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(redis_binary());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        if let Some(password) = &self.password {
            command.arg("--requirepass").arg(password);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.answers() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("redis exited with {status}: {}", self.log()));
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.stop();
                return Err(format!("redis did not answer: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING` (with `PONG`, or with `NOAUTH` when it wants a password).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.endpoint()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut answer = [0u8; 64];
        let n = stream.read(&mut answer).unwrap_or(0);
        let answer = &answer[..n];
        answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// Debian's `redis-server` puts it in `/usr/bin`; anything else on `PATH` works too.
fn redis_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("redis-server is not installed: run `cargo xtask test`, which installs it")
        })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_empty_and_needs_its_password() {
        let mut redis = RedisServer::launch_with_password("pw");
        assert_eq!(redis.command("SET k v"), "+OK");
        assert_eq!(redis.command("GET k"), "$1");
        redis.stop();
        assert!(!redis.is_running());
        redis.start();
        assert_eq!(redis.command("EXISTS k"), ":0", "no persistence");
        assert_eq!(redis.command("SET k v"), "+OK");
        assert!(redis.store_url().starts_with("redis://:pw@127.0.0.1:"));
        assert_eq!(redis.keys(), ["k"]);
        redis.kill_clients();
    }
}
