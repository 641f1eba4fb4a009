//! `portico ctl` against a real admin: the built binary started as an operator starts
//! it (`portico admin` on SQLite in a temporary directory, `portico agent` on the
//! in-process store for the instances), and `portico ctl` run as a user runs it, its
//! stdout, stderr and exit code checked. Covers login and tokens, every kind of
//! output, create/get/list/update/delete from YAML and JSON, history, diff and
//! rollback, export then apply to another instance, a namespace-wide apply, a change
//! that comes between a preview and its confirmation (on a terminal from util-linux
//! `script`), the route tester (also of an unbound instance), a namespace's plugin
//! template overrides, the OpenAPI document, status, and every exit code.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::process::Process;

const ADMIN_TOKEN: &str = "ctl-admin-token-0123456789";
const AGENT_TOKEN: &str = "ctl-agent-token-0123456789";
const DATA_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const BIN: &str = env!("CARGO_BIN_EXE_portico");
/// The namespace the agent reports instance `lost` in, which does not exist.
const GHOST: &str = "ns-0123456789abcdef";

/// An admin and an agent (instances `instance_a` and `instance_b` in `default`, and
/// `lost` in a namespace nobody created, [`GHOST`]) registered as cluster `c1`, killed
/// when dropped.
struct Deployment {
    dir: tempfile::TempDir,
    url: String,
    _agent: Process,
    _admin: Process,
}

/// What one `portico ctl` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn code(self, want: i32) -> Self {
        assert_eq!(self.code, want, "{self:?}");
        self
    }
}

/// Runs `portico ctl args…` with only the environment given (no PORTICO_* of the
/// machine's), HOME in `home`, and `stdin` fed in.
fn ctl_in(home: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = Command::new(BIN);
    command
        .arg("ctl")
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("portico starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

impl Deployment {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let agent_listen = format!("127.0.0.1:{}", testkit::free_port());
        let agent = Process::start(
            "agent",
            BIN,
            &[
                "agent",
                "--listen",
                &agent_listen,
                "--store",
                "memory://",
                "--instances",
                &format!("instance_a,instance_b,lost@{GHOST}"),
            ],
            &[("PORTICO_AGENT_TOKEN", AGENT_TOKEN)],
            d,
        );
        let admin_listen = format!("127.0.0.1:{}", testkit::free_port());
        let database = format!("sqlite://{}/admin.db", d.display());
        let admin = Process::start(
            "admin",
            BIN,
            &[
                "admin",
                "--listen",
                &admin_listen,
                "--database",
                &database,
                "--poll-interval",
                "200ms",
            ],
            &[
                ("PORTICO_ADMIN_TOKEN", ADMIN_TOKEN),
                ("PORTICO_DATA_KEY", DATA_KEY),
            ],
            d,
        );
        let deployment = Self {
            url: format!("http://{admin_listen}"),
            dir,
            _agent: agent,
            _admin: admin,
        };
        deployment.until("the admin answers", || {
            let run = deployment.as_admin(&["status"]);
            (run.code == 0).then_some(())
        });
        let cluster = deployment.file(
            "cluster.json",
            &json!({"name": "c1", "agent_address": format!("http://{agent_listen}"),
                    "agent_token": AGENT_TOKEN})
            .to_string(),
        );
        deployment
            .as_admin(&["create", "cluster", "-f", &cluster])
            .ok();
        deployment.until("the agent's instances are online", || {
            let run = deployment.as_admin(&["instances", "--cluster", "c1", "-o", "json"]);
            let online = run.json()["items"]
                .as_array()?
                .iter()
                .filter(|i| i["status"] == "online")
                .count();
            (online == 3).then_some(())
        });
        deployment
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// `ctl` with the config file in the temporary home and the admin's URL.
    fn ctl(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut all = vec![("PORTICO_ADMIN", self.url.as_str())];
        all.extend_from_slice(env);
        ctl_in(self.home(), &all, args, None)
    }

    /// `ctl` as the first platform admin (the admin token), on cluster c1.
    fn as_admin(&self, args: &[&str]) -> Run {
        self.ctl(
            &[("PORTICO_TOKEN", ADMIN_TOKEN), ("PORTICO_CLUSTER", "c1")],
            args,
        )
    }

    /// `ctl` as the admin on instance `instance`.
    fn on(&self, instance: &str, args: &[&str]) -> Run {
        self.ctl(
            &[
                ("PORTICO_TOKEN", ADMIN_TOKEN),
                ("PORTICO_CLUSTER", "c1"),
                ("PORTICO_INSTANCE", instance),
            ],
            args,
        )
    }

    /// Writes a file in the temporary directory; its path.
    fn file(&self, name: &str, content: &str) -> String {
        let path = self.home().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    fn until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                let log = |name: &str| {
                    std::fs::read_to_string(self.home().join(format!("{name}.log")))
                        .unwrap_or_default()
                };
                panic!(
                    "timed out waiting for: {what}\n{}\n----\n{}",
                    log("admin"),
                    log("agent")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `GET {path}` of the admin API with the admin token, without ctl: the status and
/// the JSON body (`Null` when there is none).
fn api_get(dep: &Deployment, path: &str) -> (u16, Value) {
    let url = format!("{}/gateway/apiserver/v1{path}", dep.url);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let answer = reqwest::Client::new()
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    })
}

fn config_path(home: &Path) -> PathBuf {
    home.join(".config/portico/ctl.json")
}

#[test]
fn login_tokens_and_exit_codes() {
    let dep = Deployment::start();
    let home = dep.home();
    let password = "alice-password-123";
    let users = [
        json!({"name": "alice", "password": password, "roles": {"default": "editor"}}),
        json!({"name": "victor", "password": "victor-password-123", "roles": {"default": "viewer"}}),
    ];
    for user in &users {
        let file = dep.file("user.json", &user.to_string());
        let run = dep.as_admin(&["create", "user", "-f", &file]).ok();
        assert!(run.stdout.contains("created"), "{run:?}");
    }
    let run = dep.as_admin(&["list", "users"]).ok();
    assert!(
        run.stdout.contains("alice") && run.stdout.contains("default=editor"),
        "{run:?}"
    );

    // Login: the token goes to a private file, never to the terminal.
    // Without a password on stdin (stdin is /dev/null) the password is empty.
    dep.ctl(&[], &["login", "--user", "alice", "--password-stdin"])
        .code(7);
    let run = ctl_in(
        home,
        &[("PORTICO_ADMIN", &dep.url)],
        &["login", "--user", "alice", "--password-stdin"],
        Some(&format!("{password}\n")),
    )
    .ok();
    let stored: Value = serde_json::from_slice(&std::fs::read(config_path(home)).unwrap()).unwrap();
    let session = stored["token"].as_str().unwrap().to_owned();
    assert!(!run.stdout.contains(&session) && !run.stderr.contains(&session));
    let mode = std::fs::metadata(config_path(home))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The stored admin is used without PORTICO_ADMIN.
    let run = ctl_in(home, &[], &["whoami"], None).ok();
    assert!(
        run.stdout.contains("alice")
            && run.stdout.contains("default=editor")
            && run.stdout.contains("console session"),
        "{run:?}"
    );
    let me = dep.ctl(&[], &["whoami", "-o", "json"]).ok().json();
    assert_eq!(me["user"]["name"], "alice");
    // A wrong password: 401 → 3, and the stored session stays.
    let run = ctl_in(
        home,
        &[
            ("PORTICO_ADMIN", &dep.url),
            (
                "PORTICO_CONFIG",
                &home.join("other.json").display().to_string(),
            ),
        ],
        &["login", "--user", "alice", "--password-stdin"],
        Some("not-the-password\n"),
    )
    .code(3);
    assert!(
        run.stderr.contains("wrong user name or password"),
        "{run:?}"
    );

    // API tokens: printed once, on stdout alone; listed without it; revoked.
    let run = dep
        .ctl(&[], &["token", "create", "ci", "--expires-in-days", "7"])
        .ok();
    let token = run.stdout.trim().to_owned();
    assert!(token.len() >= 16 && !token.contains(' '), "{run:?}");
    assert!(run.stderr.contains("shown only this once"), "{run:?}");
    let run = dep.ctl(&[("PORTICO_TOKEN", &token)], &["whoami"]).ok();
    assert!(
        run.stdout.contains("alice") && run.stdout.contains("API token"),
        "{run:?}"
    );
    let run = dep.ctl(&[], &["token", "list"]).ok();
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    assert!(
        run.stdout.contains("ci") && !run.stdout.contains(&token),
        "{run:?}"
    );
    let listed = dep.ctl(&[], &["token", "list", "-o", "json"]).ok().json();
    let id = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    dep.ctl(&[], &["token", "delete", &id]).ok();
    // 3: a token that no longer works, one that never did, none at all.
    let run = dep.ctl(&[("PORTICO_TOKEN", &token)], &["whoami"]).code(3);
    assert!(run.stderr.contains("(401)"), "{run:?}");
    dep.ctl(&[("PORTICO_TOKEN", "wrong-token-0123456789")], &["whoami"])
        .code(3);
    let run = ctl_in(
        home,
        &[
            ("PORTICO_ADMIN", &dep.url),
            (
                "PORTICO_CONFIG",
                &home.join("none.json").display().to_string(),
            ),
        ],
        &["whoami"],
        None,
    )
    .code(3);
    assert!(run.stderr.contains("not logged in"), "{run:?}");
    // A stored session known to have ended is not sent.
    let ended = home.join("ended.json");
    let mut old = stored.clone();
    old["expires_at"] = json!(1);
    std::fs::write(&ended, old.to_string()).unwrap();
    let run = ctl_in(
        home,
        &[("PORTICO_CONFIG", ended.to_str().unwrap())],
        &["whoami"],
        None,
    )
    .code(3);
    assert!(
        run.stderr.contains("ended at 1970-01-01T00:00:01Z"),
        "{run:?}"
    );
    // The stored session goes only to the admin it came from.
    let run = ctl_in(
        home,
        &[("PORTICO_ADMIN", "http://127.0.0.1:1")],
        &["whoami"],
        None,
    )
    .code(3);
    assert!(run.stderr.contains("not logged in"), "{run:?}");

    // 4: a viewer writing (logged in through its own config file).
    let viewer_config = home.join("viewer.json").display().to_string();
    let viewer = [
        ("PORTICO_CONFIG", viewer_config.as_str()),
        ("PORTICO_ADMIN", dep.url.as_str()),
        ("PORTICO_CLUSTER", "c1"),
        ("PORTICO_INSTANCE", "instance_a"),
    ];
    ctl_in(
        home,
        &viewer,
        &["login", "-u", "victor", "--password-stdin"],
        Some("victor-password-123\n"),
    )
    .ok();
    let upstream = dep.file(
        "up.yaml",
        "id: up\nnodes:\n  - host: 127.0.0.1\n    port: 8080\n",
    );
    let run = ctl_in(
        home,
        &viewer,
        &["create", "upstream", "-f", &upstream],
        None,
    )
    .code(4);
    assert!(run.stderr.contains("(403)"), "{run:?}");
    // …who may read.
    ctl_in(home, &viewer, &["list", "routes"], None).ok();

    // 5: not found; 6: created twice; 7: invalid, with every field.
    let as_alice = |args: &[&str]| {
        dep.ctl(
            &[
                ("PORTICO_CLUSTER", "c1"),
                ("PORTICO_INSTANCE", "instance_a"),
            ],
            args,
        )
    };
    let run = as_alice(&["get", "route", "nope"]).code(5);
    assert!(run.stderr.contains("(404)"), "{run:?}");
    as_alice(&["create", "upstream", "-f", &upstream]).ok();
    let run = as_alice(&["create", "upstream", "-f", &upstream]).code(6);
    assert!(run.stderr.contains("(409)"), "{run:?}");
    let bad = dep.file(
        "bad-route.json",
        r#"{"id": "bad", "paths": ["no-slash"], "upstream_id": "up", "methods": ["G E T"]}"#,
    );
    let run = as_alice(&["create", "route", "-f", &bad]).code(7);
    assert!(
        run.stderr.contains("bad-route.json: invalid route (422)")
            && run.stderr.contains("paths[0]:")
            && run.stderr.contains("methods[0]:"),
        "{run:?}"
    );
    // A file that does not parse: its name, line and column; nothing sent.
    let broken = dep.file("broken.yaml", "id: r9\npaths: [/a\nupstream_id: up\n");
    let run = as_alice(&["create", "route", "-f", &broken]).code(7);
    assert!(run.stderr.contains("broken.yaml:"), "{run:?}");
    assert!(run.stderr.contains("not valid YAML"), "{run:?}");
    // An unknown field: the admin's 400 names it.
    let unknown = dep.file(
        "unknown.json",
        r#"{"id": "u2", "nodes": [], "colour": "blue"}"#,
    );
    let run = as_alice(&["create", "upstream", "-f", &unknown]).code(7);
    assert!(run.stderr.contains("colour"), "{run:?}");
    // 2: usage, by clap and by ctl (no instance given).
    dep.ctl(&[], &["get", "gizmos"]).code(2);
    let run = dep.ctl(&[], &["list", "routes"]).code(2);
    assert!(run.stderr.contains("--cluster"), "{run:?}");

    // Logout ends the session; the stored token is gone.
    dep.ctl(&[], &["logout"]).ok();
    let stored: Value = serde_json::from_slice(&std::fs::read(config_path(home)).unwrap()).unwrap();
    assert!(stored.get("token").is_none(), "{stored}");
    dep.ctl(&[("PORTICO_TOKEN", &session)], &["whoami"]).code(3);
    dep.ctl(&[], &["whoami"]).code(3);
}

#[test]
fn config_history_export_apply_and_route_tests() {
    let dep = Deployment::start();
    let a = |args: &[&str]| dep.on("instance_a", args);
    let b = |args: &[&str]| dep.on("instance_b", args);

    // Create from YAML and JSON, with a revision message.
    let upstream = dep.file(
        "up.yaml",
        "# the API's servers\nid: up\nnodes:\n  - host: 127.0.0.1\n    port: 8080\n",
    );
    let route = dep.file(
        "r1.json",
        &json!({"id": "r1", "name": "api", "paths": ["/api/*"], "hosts": ["api.example.com"],
                "upstream_id": "up", "plugins": {"cors": {}}})
        .to_string(),
    );
    let run = a(&["create", "upstream", "-f", &upstream, "-m", "the upstream"]).ok();
    assert!(
        run.stdout.starts_with("upstream up created (revision 1, "),
        "{run:?}"
    );
    a(&["create", "route", "-f", &route, "--message", "first route"]).ok();
    let canary = dep.file(
        "canary.yaml",
        "id: canary\npaths: [\"/api/*\"]\nhosts: [api.example.com]\nheaders:\n  - {name: x-canary, op: equals, value: \"1\"}\nupstream_id: up\n",
    );
    a(&["create", "route", "-f", &canary]).ok();

    // Output: a table by default, the server's JSON and YAML on demand.
    let run = a(&["get", "route", "r1"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "PATHS", "HOSTS", "UPSTREAM"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row, ["r1", "api", "/api/*", "api.example.com", "up"]);
    let listed = a(&["list", "routes", "-o", "json"]).ok().json();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["canary", "r1"]);
    assert_eq!(listed["revision"], 3);
    let yaml = a(&["get", "routes", "-o", "yaml"]).ok();
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml.stdout).unwrap();
    assert_eq!(from_yaml, listed);
    let run = a(&["list", "upstreams"]).ok();
    assert!(run.stdout.contains("127.0.0.1:8080"), "{run:?}");

    // Update: previewed with --dry-run (nothing written), then for real from YAML.
    let changed = dep.file(
        "r1.yaml",
        "id: r1\nname: api\npaths: [\"/v2/*\"]\nhosts: [api.example.com]\nupstream_id: up\nplugins: {cors: {}}\n",
    );
    let run = a(&["update", "route", "-f", &changed, "--dry-run"]).ok();
    assert!(
        run.stdout
            .contains("dry run: would update route r1 as revision 4")
            && run.stdout.contains("paths[0]: \"/api/*\" → \"/v2/*\""),
        "{run:?}"
    );
    assert_eq!(
        a(&["get", "route", "r1", "-o", "json"]).ok().json()["paths"][0],
        "/api/*"
    );
    let run = a(&["update", "route", "r1", "-f", &changed, "-m", "move to v2"]).ok();
    assert!(
        run.stdout.starts_with("route r1 updated (revision 4, "),
        "{run:?}"
    );
    assert_eq!(
        a(&["get", "route", "r1", "-o", "json"]).ok().json()["paths"][0],
        "/v2/*"
    );
    // PUT of an absent object creates it; delete needs the id and asks nothing.
    let r2 = dep.file(
        "r2.json",
        r#"{"id": "r2", "paths": ["/two"], "upstream_id": "up"}"#,
    );
    let run = a(&["update", "route", "-f", &r2]).ok();
    assert!(
        run.stdout.starts_with("route r2 created (revision 5"),
        "{run:?}"
    );
    let run = a(&["delete", "route", "r2", "--dry-run"]).ok();
    assert!(run.stdout.contains("would delete route r2"), "{run:?}");
    a(&["get", "route", "r2"]).ok();
    let run = a(&["delete", "route", "r2", "-m", "not needed"]).ok();
    assert!(
        run.stdout.starts_with("route r2 deleted (revision 6"),
        "{run:?}"
    );
    a(&["get", "route", "r2"]).code(5);
    // A message must be one line (clap refuses it: nothing is sent).
    a(&["delete", "route", "r1", "-m", "two\nlines"]).code(2);
    // In use: deleting the upstream routes use is a conflict.
    a(&["delete", "upstream", "up"]).code(6);

    // History, one revision, a diff.
    let run = a(&["history"]).ok();
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["REVISION", "OP", "AUTHOR", "TIME", "OBJECTS", "MESSAGE"]
    );
    assert!(
        run.stdout.contains("move to v2") && run.stdout.contains("first route"),
        "{run:?}"
    );
    let history = a(&["history", "-o", "json", "--limit", "2"]).ok().json();
    assert_eq!(history["items"].as_array().unwrap().len(), 2);
    assert_eq!(history["items"][0]["revision"], 6);
    let run = a(&["revision", "4"]).ok();
    assert!(
        run.stdout.contains("move to v2") && run.stdout.contains("~ routes/r1"),
        "{run:?}"
    );
    let run = a(&["diff", "--from", "3", "--to", "4"]).ok();
    assert!(
        run.stdout.contains("0 to create, 1 to update, 0 to delete")
            && run.stdout.contains("paths[0]: \"/api/*\" → \"/v2/*\""),
        "{run:?}"
    );
    let diff = a(&["diff", "--from", "0", "-o", "json"]).ok().json();
    assert_eq!(diff["to"], 6);
    a(&["diff", "--from", "99"]).code(7);

    // Rollback: previewed; without a terminal it needs --yes; --dry-run only shows.
    let run = a(&["rollback", "3"]).code(2);
    assert!(
        run.stdout.contains("~ routes/r1") && run.stderr.contains("--yes"),
        "{run:?}"
    );
    let run = a(&["rollback", "3", "--dry-run"]).ok();
    assert!(run.stdout.contains("would be revision 7"), "{run:?}");
    assert_eq!(
        a(&["get", "route", "r1", "-o", "json"]).ok().json()["paths"][0],
        "/v2/*"
    );
    let run = a(&["rollback", "3", "--yes", "-m", "back to api"]).ok();
    assert!(run.stdout.contains("rolled back: revision 7"), "{run:?}");
    assert_eq!(
        a(&["get", "route", "r1", "-o", "json"]).ok().json()["paths"][0],
        "/api/*"
    );
    let history = a(&["history", "-o", "json", "--limit", "1"]).ok().json();
    assert_eq!(history["items"][0]["op"], "rollback");
    assert_eq!(history["items"][0]["message"], "back to api");
    let run = a(&["rollback", "3", "--yes"]).ok();
    assert!(run.stderr.contains("nothing to change"), "{run:?}");

    // The route tester: the match, its plugins in running order, the near misses.
    let run = a(&[
        "test-route",
        "--method",
        "GET",
        "--host",
        "api.example.com",
        "--path",
        "/api/x",
        "-H",
        "x-trace: 1",
        "--query",
        "a=b",
        "--client-ip",
        "1.2.3.4",
    ])
    .ok();
    assert!(
        run.stdout.contains("outcome: matched")
            && run
                .stdout
                .contains("matched: route r1 (path /api/*, host api.example.com) → upstream up")
            && run.stdout.contains("1. cors (priority")
            && run.stdout.contains("canary")
            && run.stdout.contains("header_mismatch")
            && run
                .stdout
                .contains("request: GET /api/x?a=b, host api.example.com, from 1.2.3.4"),
        "{run:?}"
    );
    let tested = a(&["test-route", "--path", "/nowhere", "-o", "json"])
        .ok()
        .json();
    assert_eq!(tested["outcome"]["kind"], "not_found");
    a(&["test-route", "--path", "no-slash"]).code(7);

    // Export, then apply to the empty instance_b: previewed, refused without a
    // terminal, applied with --yes, and then both export the same.
    let exported = dep.home().join("a.yaml");
    let exported = exported.to_str().unwrap();
    a(&["export", "-o", exported]).ok();
    let run = b(&["apply", "-f", exported]).code(2);
    assert!(
        run.stdout.contains("+ routes/r1")
            && run.stdout.contains("+ upstreams/up")
            && run.stdout.contains("3 to create, 0 to update, 0 to delete"),
        "{run:?}"
    );
    let run = b(&["apply", "-f", exported, "--dry-run"]).ok();
    assert!(run.stdout.contains("+ routes/canary"), "{run:?}");
    b(&["get", "route", "r1"]).code(5);
    let run = b(&["apply", "-f", exported, "--yes"]).ok();
    assert!(run.stdout.contains("applied: revision 1"), "{run:?}");
    let config = |run: Run| {
        let mut value: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
        value.as_object_mut().unwrap().remove("revision");
        value
    };
    assert_eq!(config(a(&["export"]).ok()), config(b(&["export"]).ok()));
    // Sealed secrets are asked for (instance_a has none: the same file).
    assert_eq!(
        config(a(&["export", "--sealed-secrets"]).ok()),
        config(a(&["export"]).ok())
    );
    let json_export = b(&["export", "--format", "json"]).ok().json();
    assert_eq!(json_export["revision"], 1);
    let run = b(&["apply", "-f", exported, "--yes"]).ok();
    assert!(run.stderr.contains("nothing to change"), "{run:?}");
    let namespace = dep
        .as_admin(&["export", "--namespace-wide", "--format", "json"])
        .ok()
        .json();
    assert_eq!(namespace["instances"].as_array().unwrap().len(), 2);

    // Status, instances, nodes, the global kinds.
    let run = dep.as_admin(&["status"]).ok();
    assert!(run.stdout.contains("reconciler:"), "{run:?}");
    let run = dep.as_admin(&["instances"]).ok();
    assert!(
        run.stdout.contains("instance_a") && run.stdout.contains("online"),
        "{run:?}"
    );
    let run = dep
        .ctl(
            &[("PORTICO_TOKEN", ADMIN_TOKEN)],
            &["instances", "--namespace", "default"],
        )
        .ok();
    assert!(run.stdout.contains("instance_b"), "{run:?}");
    let run = a(&["nodes"]).ok();
    // No gateway node in this test: the header, then the convergence, load and
    // convergence-times lines.
    let (rest, times) = run.stdout.trim_end().rsplit_once('\n').unwrap();
    let (rest, load) = rest.rsplit_once('\n').unwrap();
    let (table, summary) = rest.rsplit_once('\n').unwrap();
    assert!(
        times.starts_with("last ") && times.ends_with("none reached every node with a known time"),
        "{run:?}"
    );
    assert!(
        summary.starts_with("revision ") && summary.ends_with("reached 0 of 0 nodes"),
        "{run:?}"
    );
    assert_eq!(
        load, "load: 0.00 req/s, - 5xx, 0 connections (0 of 0 nodes reporting)",
        "{run:?}"
    );
    let header: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NODE",
            "ADDRESS",
            "SERVING",
            "REVISION",
            "CONFIG_FROM",
            "REQ/S",
            "5XX",
            "CONNS",
            "IN_FLIGHT",
            "SKIPPED",
            "UNHEALTHY_UPSTREAM_NODES",
            "UPDATED"
        ],
        "{run:?}"
    );
    // An instance whose namespace does not exist: the tester says so first.
    let run = dep
        .as_admin(&[
            "test-route",
            "--instance",
            "lost",
            "--namespace",
            GHOST,
            "--path",
            "/x",
        ])
        .ok();
    assert!(
        run.stdout.starts_with("UNBOUND: ")
            && run.stdout.lines().next().unwrap().contains(GHOST)
            && run.stdout.contains("outcome: not_found"),
        "{run:?}"
    );
    let run = a(&["test-route", "--path", "/x"]).ok();
    assert!(!run.stdout.contains("UNBOUND"), "{run:?}");
    let run = dep.as_admin(&["list", "clusters"]).ok();
    assert!(run.stdout.contains("c1"), "{run:?}");
    let run = dep.as_admin(&["get", "namespaces", "default"]).ok();
    assert!(run.stdout.contains("default"), "{run:?}");
    // A global kind through its whole life, from YAML; no revisions, so no dry run.
    let ns = dep.file("ns.yaml", "name: payments\ndescription: team P\n");
    dep.as_admin(&["create", "namespace", "-f", &ns, "--dry-run"])
        .code(2);
    let created = dep
        .as_admin(&["create", "namespace", "-f", &ns, "-o", "json"])
        .ok()
        .json();
    let id = created["id"].as_str().unwrap();
    let renamed = dep.file(
        "ns2.yaml",
        &format!("id: {id}\nname: payments\ndescription: team Q\n"),
    );
    let run = dep.as_admin(&["update", "ns", "-f", &renamed]).ok();
    assert_eq!(run.stdout.trim(), format!("namespace {id} updated"));
    let run = dep.as_admin(&["get", "ns", id]).ok();
    assert!(run.stdout.contains("team Q"), "{run:?}");
    dep.as_admin(&["delete", "namespace", id]).ok();
    dep.as_admin(&["get", "namespace", id]).code(5);

    // A namespace's plugin template overrides (default: the namespace `default`):
    // written with PUT, no revisions; checked through the API itself.
    let at_api = "/namespaces/default/plugin_templates/request-id";
    let run = dep.as_admin(&["list", "ns-templates"]).ok();
    assert_eq!(
        run.stdout.split_whitespace().collect::<Vec<_>>(),
        ["ID", "ENABLED", "PRIORITY", "DEFAULTS"],
        "{run:?}"
    );
    let template = dep.file(
        "template.yaml",
        "id: request-id\npriority: 12000\ndefaults:\n  header_name: x-req\n",
    );
    for refused in ["--dry-run", "-m"] {
        let mut args = vec!["create", "ns-templates", "-f", &template, refused];
        if refused == "-m" {
            args.push("why");
        }
        let run = dep.as_admin(&args).code(2);
        assert!(run.stderr.contains("no revisions"), "{run:?}");
    }
    assert_eq!(api_get(&dep, at_api).0, 404);
    let run = dep
        .as_admin(&["create", "namespace_plugin_template", "-f", &template])
        .ok();
    assert_eq!(
        run.stdout.trim(),
        "plugin template request-id of namespace default created"
    );
    let (status, stored) = api_get(&dep, at_api);
    assert_eq!(status, 200);
    assert_eq!(
        stored,
        json!({"id": "request-id", "priority": 12000, "defaults": {"header_name": "x-req"}})
    );
    // `create` does not replace: exit 6, nothing written.
    let run = dep
        .as_admin(&["create", "ns-templates", "-f", &template])
        .code(6);
    assert!(run.stderr.contains("exists already"), "{run:?}");
    let run = dep
        .as_admin(&[
            "list",
            "namespace-plugin-templates",
            "--namespace",
            "default",
        ])
        .ok();
    let row: Vec<&str> = run
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["request-id", "-", "12000", "header_name"], "{run:?}");
    let got = dep
        .as_admin(&["get", "ns-templates", "request-id", "-o", "json"])
        .ok()
        .json();
    assert_eq!(got, stored);
    let off = dep.file(
        "template.json",
        r#"{"id": "request-id", "enabled": false, "defaults": {"header_name": "x-id"}}"#,
    );
    let run = dep
        .ctl(
            &[
                ("PORTICO_TOKEN", ADMIN_TOKEN),
                ("PORTICO_NAMESPACE", "default"),
            ],
            &["update", "ns-templates", "-f", &off],
        )
        .ok();
    assert_eq!(
        run.stdout.trim(),
        "plugin template request-id of namespace default updated"
    );
    assert_eq!(
        api_get(&dep, at_api).1,
        json!({"id": "request-id", "enabled": false, "defaults": {"header_name": "x-id"}})
    );
    // A default of the wrong type: refused by field, exit 7, nothing written.
    let bad = dep.file(
        "bad-template.json",
        r#"{"id": "request-id", "defaults": {"header_name": 5}}"#,
    );
    let run = dep
        .as_admin(&["update", "ns-templates", "-f", &bad])
        .code(7);
    assert!(
        run.stderr.contains("bad-template.json:") && run.stderr.contains("defaults.header_name"),
        "{run:?}"
    );
    assert_eq!(api_get(&dep, at_api).1["enabled"], false);
    let run = dep.as_admin(&["delete", "ns-templates", "request-id"]).ok();
    assert_eq!(
        run.stdout.trim(),
        "plugin template request-id of namespace default deleted"
    );
    assert_eq!(api_get(&dep, at_api).0, 404);
    dep.as_admin(&["delete", "ns-templates", "request-id"])
        .code(5);
    let run = dep
        .as_admin(&["create", "ns-templates", "-f", &bad])
        .code(7);
    assert!(run.stderr.contains("defaults.header_name"), "{run:?}");
    assert_eq!(api_get(&dep, at_api).0, 404);

    // The OpenAPI document, as JSON (in the admin's order) and as YAML.
    let run = dep.as_admin(&["openapi"]).ok();
    assert!(run.stdout.starts_with("{\n  \"openapi\": \"3."), "{run:?}");
    let doc = run.json();
    assert!(
        doc["paths"]["/namespaces/{id}/plugin_templates/{plugin}"].is_object(),
        "{doc}"
    );
    let yaml = dep.as_admin(&["openapi", "-o", "yaml"]).ok();
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml.stdout).unwrap();
    assert_eq!(from_yaml, doc);
}

/// Runs `portico ctl args…` (as the admin, on cluster c1) on a terminal (`script`
/// gives it a pty), waits for its confirmation question, runs `between`, then answers
/// yes: what a person sees who confirms after someone else changed the instance.
fn confirmed_after(dep: &Deployment, args: &[&str], between: impl FnOnce()) -> Run {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let quoted: Vec<String> = [BIN, "ctl"]
        .iter()
        .chain(args)
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"])
        .env_clear()
        .env("HOME", dep.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORTICO_ADMIN", &dep.url)
        .env("PORTICO_TOKEN", ADMIN_TOKEN)
        .env("PORTICO_CLUSTER", "c1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    dep.until("the confirmation question", || {
        seen.lock().unwrap().contains("[y/N]").then_some(())
    });
    between();
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stdout = seen.lock().unwrap().clone();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: String::new(),
    }
}

#[test]
fn namespace_wide_apply_and_changes_after_the_preview() {
    let dep = Deployment::start();
    let a = |args: &[&str]| dep.on("instance_a", args);
    let b = |args: &[&str]| dep.on("instance_b", args);
    let file = json!({
        "namespace": "default",
        "name": "default",
        "instances": [
            {"cluster": "c1", "instance": "instance_a", "config": {
                "upstreams": [{"id": "up", "nodes": [{"host": "127.0.0.1", "port": 8080}]}],
                "routes": [{"id": "r1", "paths": ["/a/*"], "upstream_id": "up"}]}},
            {"cluster": "c1", "instance": "instance_b", "config": {
                "upstreams": [{"id": "up", "nodes": [{"host": "127.0.0.1", "port": 8081}]}],
                "routes": [{"id": "r2", "paths": ["/b/*"], "upstream_id": "up"}]}}
        ]
    });
    let ns = dep.file("ns.yaml", &serde_yaml_ng::to_string(&file).unwrap());

    // Previewed per instance; refused without a terminal; a dry run writes nothing.
    let run = dep
        .as_admin(&["apply", "--namespace-wide", "-f", &ns])
        .code(2);
    assert!(
        run.stdout.contains("c1/instance_a (would be revision 1)")
            && run.stdout.contains("+ routes/r1")
            && run.stdout.contains("c1/instance_b (would be revision 1)")
            && run.stdout.contains("+ routes/r2"),
        "{run:?}"
    );
    dep.as_admin(&["apply", "--namespace-wide", "-f", &ns, "--dry-run"])
        .ok();
    a(&["get", "route", "r1"]).code(5);
    // An instance's apply refuses a namespace file, naming the flag.
    let run = a(&["apply", "-f", &ns, "--yes"]).code(7);
    assert!(run.stderr.contains("--namespace-wide"), "{run:?}");

    let run = dep
        .as_admin(&[
            "apply",
            "--namespace-wide",
            "-f",
            &ns,
            "--yes",
            "-m",
            "both",
        ])
        .ok();
    assert!(
        run.stdout.contains("applied c1/instance_a: revision 1")
            && run.stdout.contains("applied c1/instance_b: revision 1"),
        "{run:?}"
    );
    let exported = dep
        .as_admin(&["export", "--namespace-wide", "--format", "json"])
        .ok()
        .json();
    for (i, entry) in exported["instances"].as_array().unwrap().iter().enumerate() {
        let routes = &entry["config"]["routes"];
        assert_eq!(
            routes[0]["id"],
            file["instances"][i]["config"]["routes"][0]["id"]
        );
        assert_eq!(
            routes[0]["paths"],
            file["instances"][i]["config"]["routes"][0]["paths"]
        );
    }
    let history = b(&["history", "-o", "json"]).ok().json();
    assert_eq!(history["items"][0]["message"], "both");
    let run = dep
        .as_admin(&["apply", "--namespace-wide", "-f", &ns, "--yes"])
        .ok();
    assert!(run.stderr.contains("nothing to change"), "{run:?}");

    // A file pinned to a revision the instance has left: a conflict (exit 6).
    let mut pinned = file.clone();
    pinned["instances"][0]["expected_revision"] = json!(0);
    pinned["instances"][0]["config"]["routes"][0]["paths"] = json!(["/a2/*"]);
    let pinned = dep.file("pinned.yaml", &serde_yaml_ng::to_string(&pinned).unwrap());
    let run = dep
        .as_admin(&["apply", "--namespace-wide", "-f", &pinned, "--yes"])
        .code(6);
    assert!(
        run.stderr.contains("revision_conflict") || run.stderr.contains("not 0 as expected"),
        "{run:?}"
    );

    // Someone writes between the preview and the confirmation: nothing is written,
    // exit 6, saying where the instance is now.
    let mut changed = file.clone();
    changed["instances"][0]["config"]["routes"][0]["paths"] = json!(["/a3/*"]);
    changed["instances"][1]["config"]["routes"][0]["paths"] = json!(["/b3/*"]);
    let changed = dep.file("changed.yaml", &serde_yaml_ng::to_string(&changed).unwrap());
    let late = dep.file(
        "late.yaml",
        &json!({"id": "late", "nodes": [{"host": "127.0.0.1", "port": 1}]}).to_string(),
    );
    let run = confirmed_after(&dep, &["apply", "--namespace-wide", "-f", &changed], || {
        b(&["create", "upstream", "-f", &late]).ok();
    });
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stdout.contains(
            "the instance c1/instance_b changed since the preview (now at revision 2); run again"
        ),
        "{run:?}"
    );
    let route = a(&["get", "route", "r1", "-o", "json"]).ok().json();
    assert_eq!(
        route["paths"],
        json!(["/a/*"]),
        "instance_a was not written"
    );

    // The same for one instance's apply and for a rollback.
    let one = dep.file(
        "one.yaml",
        &serde_yaml_ng::to_string(&file["instances"][1]["config"]).unwrap(),
    );
    let run = confirmed_after(
        &dep,
        &["apply", "--instance", "instance_b", "-f", &one],
        || {
            b(&["delete", "upstream", "late"]).ok();
        },
    );
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stdout
            .contains("changed since the preview (now at revision 3); run again"),
        "{run:?}"
    );
    let run = confirmed_after(&dep, &["rollback", "--instance", "instance_b", "0"], || {
        b(&["create", "upstream", "-f", &late]).ok();
    });
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stdout
            .contains("changed since the preview (now at revision 4); run again"),
        "{run:?}"
    );
    b(&["get", "upstream", "late"]).ok();
    // Confirmed with nothing in between, it is written.
    let run = confirmed_after(&dep, &["rollback", "--instance", "instance_b", "3"], || {});
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("rolled back: revision 5"), "{run:?}");
    b(&["get", "upstream", "late"]).code(5);
}

#[test]
fn completions_usage_and_an_unreachable_admin() {
    let home = tempfile::tempdir().unwrap();
    let run = ctl_in(home.path(), &[], &["completion", "bash"], None).ok();
    assert!(
        run.stdout.len() > 1000 && run.stdout.contains("ctl"),
        "{run:?}"
    );
    let run = ctl_in(home.path(), &[], &["completion", "zsh"], None).ok();
    assert!(run.stdout.contains("test-route"));
    // 8: nothing listens there.
    let run = ctl_in(
        home.path(),
        &[("PORTICO_TOKEN", "some-token-0123456789")],
        &["--admin", "http://127.0.0.1:1", "whoami"],
        None,
    )
    .code(8);
    assert!(
        run.stderr
            .contains("cannot reach the admin at http://127.0.0.1:1"),
        "{run:?}"
    );
    // 2: no admin at all; a bad URL; a missing argument (clap).
    let run = ctl_in(home.path(), &[], &["whoami"], None).code(2);
    assert!(run.stderr.contains("--admin"), "{run:?}");
    ctl_in(home.path(), &[], &["--admin", "nope", "whoami"], None).code(2);
    ctl_in(home.path(), &[], &["delete", "route"], None).code(2);
    // 1: anything else, such as a config file that cannot be read (a directory).
    let run = ctl_in(
        home.path(),
        &[("PORTICO_CONFIG", home.path().to_str().unwrap())],
        &["--admin", "http://127.0.0.1:1", "whoami"],
        None,
    )
    .code(1);
    assert!(run.stderr.contains("cannot read"), "{run:?}");
    // A config file that is not one: named, with line and column.
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, "{\"admin\": 1}").unwrap();
    let run = ctl_in(
        home.path(),
        &[("PORTICO_CONFIG", bad.to_str().unwrap())],
        &["whoami"],
        None,
    )
    .code(7);
    assert!(run.stderr.contains("bad.json:1:"), "{run:?}");
    // The exit codes are in the help.
    let run = ctl_in(home.path(), &[], &["--help"], None).ok();
    assert!(run.stdout.contains("Exit codes:") && run.stdout.contains("8  admin unreachable"));
}
