//! Project automation: `cargo xtask demo`, `cargo xtask test`, `cargo xtask bench`,
//! `cargo xtask console` (the web console's type check and browser tests, which
//! `test` runs too).
//!
//! Each command first makes sure the system packages it needs are installed (with
//! apt-get when running as root on Debian), so both README commands work on a fresh
//! machine that has only a Rust toolchain.

use std::process::Command;

use anyhow::{bail, Context};

/// (what must exist: a command on PATH, or an absolute file path; the Debian package
/// that provides it). `etcd-client`'s build compiles etcd's protos, which import the
/// protobuf well-known types: `protoc` alone (protobuf-compiler without its recommends)
/// does not bring them.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("cmake", "cmake"),
    ("protoc", "protobuf-compiler"),
    (
        "/usr/include/google/protobuf/timestamp.proto",
        "libprotobuf-dev",
    ),
];
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("h2load", "nghttp2-client"),
    ("openssl", "openssl"),
    ("redis-server", "redis-server"),
];
const BENCH_PACKAGES: &[(&str, &str)] =
    &[("nginx", "nginx"), ("wrk", "wrk"), ("valgrind", "valgrind")];
/// The web console's checks: Node.js and npm (TypeScript and playwright-core come from
/// the npm registry into `crates/admin/console/node_modules`), Debian's Chromium, and a
/// font so its screenshots show text.
const CONSOLE_PACKAGES: &[(&str, &str)] = &[
    ("node", "nodejs"),
    ("npm", "npm"),
    ("/usr/bin/chromium", "chromium"),
    (
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "fonts-liberation",
    ),
];

/// The schemathesis release the OpenAPI test runs (from PyPI, into a virtualenv under
/// the target directory; `crates/admin/tests/openapi.rs`).
const SCHEMATHESIS: &str = "4.32.5";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(t, r)| (t.as_str(), r));
    match task {
        "demo" => {
            ensure_packages(BUILD_PACKAGES)?;
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", "portico", "--", "demo"])
                .args(rest);
            run(cmd)
        }
        "test" => {
            ensure_packages(BUILD_PACKAGES)?;
            ensure_packages(TEST_PACKAGES)?;
            ensure_services();
            let schemathesis = ensure_schemathesis()?;
            let mut fmt = cargo();
            fmt.args(["fmt", "--all", "--", "--check"]);
            run(fmt)?;
            let mut clippy = cargo();
            clippy.args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            run(clippy)?;
            let mut test = cargo();
            test.args(["test", "--workspace"])
                .env("PORTICO_SCHEMATHESIS", &schemathesis)
                .args(rest);
            run(test)?;
            // The gateway's proxy suites again with the fast path off: what they check
            // must hold on Pingora's path too (tests/common/mod.rs reads the variable).
            let mut pingora = cargo();
            pingora
                .args(["test", "-p", "gateway"])
                .args([
                    "--test",
                    "proxy",
                    "--test",
                    "upstreams",
                    "--test",
                    "protocols",
                    "--test",
                    "hardening",
                    "--test",
                    "plugins",
                    "--test",
                    "redis_limits",
                    "--test",
                    "tester",
                    "--test",
                    "load",
                    "--test",
                    "kubernetes",
                ])
                .env("PORTICO_TEST_PINGORA_ONLY", "1")
                .args(rest);
            run(pingora)?;
            console(false)
        }
        "console" => {
            ensure_packages(BUILD_PACKAGES)?;
            console(rest.iter().any(|a| a == "--docs-shots"))
        }
        "bench" => {
            ensure_packages(BUILD_PACKAGES)?;
            ensure_packages(TEST_PACKAGES)?;
            ensure_packages(BENCH_PACKAGES)?;
            let mut cmd = Command::new("bash");
            cmd.arg("bench/run.sh").args(rest);
            run(cmd)
        }
        _ => {
            eprintln!("usage: cargo xtask <demo|test|bench> [args…]");
            eprintln!(
                "  demo   run admin + agent + gateway in one process (SQLite, in-process store)"
            );
            eprintln!("  test   install what is missing, then fmt check, clippy and every test");
            eprintln!("  bench  gateway vs nginx throughput, and config propagation time");
            eprintln!(
                "  console  type-check the web console and run its browser tests (--docs-shots: refresh docs/console/)"
            );
            bail!("unknown task {task:?}")
        }
    }
}

/// The web console's checks: its JavaScript type-checked (`tsc --checkJs`), then its
/// end-to-end tests in headless Chromium against a running `portico demo`
/// (`crates/admin/console/tests/e2e.mjs`).
fn console(docs_shots: bool) -> anyhow::Result<()> {
    ensure_packages(CONSOLE_PACKAGES)?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin/console");
    // `npm ci` only when the lock file changed since the last install.
    let lock = std::fs::read(dir.join("package-lock.json"))
        .context("reading the console's package-lock.json")?;
    let stamp = dir.join("node_modules").join(".portico-installed-lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
        let mut ci = Command::new("npm");
        ci.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir);
        run(ci)?;
        std::fs::write(&stamp, &lock).context("writing the npm install stamp")?;
    }
    let mut tsc = Command::new("npx");
    tsc.args(["--no-install", "tsc", "-p", "."])
        .current_dir(&dir);
    run(tsc)?;
    let mut build = cargo();
    build.args(["build", "-p", "portico"]);
    run(build)?;
    let mut e2e = Command::new("node");
    e2e.arg("tests/e2e.mjs")
        .current_dir(&dir)
        .env("PORTICO_BIN", target_dir().join("debug").join("portico"));
    if docs_shots {
        e2e.env("PORTICO_DOCS_SHOTS", "1");
    }
    run(e2e)
}

/// The workspace's target directory.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has_command(name: &str) -> bool {
    if name.starts_with('/') {
        return std::path::Path::new(name).is_file();
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(name).is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the Debian packages whose commands are missing.
fn ensure_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(command, _)| !has_command(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian packages (as root with apt-get; otherwise says what to install).
fn apt_install(missing: &[&str]) -> anyhow::Result<()> {
    if !is_root() || !has_command("apt-get") {
        bail!(
            "missing system packages: {}; install them (e.g. sudo apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install)?;
    // Debian starts packaged daemons on install; the tests start their own etcd and
    // nginx on free ports, so stop the system-wide ones to keep the machine quiet.
    for service in ["etcd", "nginx"] {
        let _ = Command::new("service").args([service, "stop"]).status();
    }
    Ok(())
}

/// Installs schemathesis from PyPI into a virtualenv of its own (nothing system-wide
/// changes but, when missing, Debian's `python3` and `python3-venv`) and answers the
/// path of its `st` command.
fn ensure_schemathesis() -> anyhow::Result<std::path::PathBuf> {
    let venv = target_dir()
        .join("tools")
        .join(format!("schemathesis-{SCHEMATHESIS}"));
    let st = venv.join("bin").join("st");
    if st.is_file() {
        return Ok(st);
    }
    ensure_packages(&[("python3", "python3")])?;
    let venv_works = || {
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !venv_works() {
        // Debian splits venv's pip bootstrap into its own package.
        apt_install(&["python3-venv"])?;
    }
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    run(create)?;
    let mut install = Command::new(venv.join("bin").join("pip"));
    install
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS}"));
    run(install)?;
    if !st.is_file() {
        bail!("schemathesis installed, but {} is missing", st.display());
    }
    Ok(st)
}

/// The PostgreSQL and MariaDB tests expect the machine's servers; start them if they are
/// installed but stopped (best effort: a test that still cannot connect fails loudly).
fn ensure_services() {
    let reachable = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    if !reachable(5432) && has_command("pg_ctlcluster") {
        if let Ok(dir) = std::fs::read_dir("/etc/postgresql") {
            for version in dir.flatten() {
                let _ = Command::new("pg_ctlcluster")
                    .args(["--skip-systemctl-redirect"])
                    .arg(version.file_name())
                    .args(["main", "start"])
                    .status();
            }
        }
    }
    if !reachable(3306) && has_command("mariadbd") {
        let _ = Command::new("start-stop-daemon")
            .args([
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/mariadbd",
            ])
            .status();
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}
