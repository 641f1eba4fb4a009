//! `portico ctl`: the command-line client of the admin API (`docs/cli.md`). It speaks
//! only HTTP/JSON to `{admin}/gateway/apiserver/v1`, like the console.
//!
//! This file holds the command line (clap) and the dispatch; each area has a file:
//! `auth.rs` (login, tokens), `resources.rs` (get/list/create/update/delete),
//! `history.rs` (history, diff, rollback), `declarative.rs` (export, apply),
//! `tester.rs` (the route tester), `status.rs` (status, instances, nodes, the OpenAPI
//! document); beside them the plumbing: `client.rs` (requests), `config.rs` (the
//! config file), `input.rs` (`-f` files), `output.rs` (tables, JSON, YAML),
//! `changes.rs` (previews and diffs), `prompt.rs` (confirmations, the password) and
//! `error.rs` (failures and exit codes).

mod auth;
mod changes;
mod client;
mod config;
mod declarative;
mod error;
mod history;
mod input;
mod output;
mod prompt;
mod resources;
mod status;
mod tester;

use std::path::PathBuf;
use std::process::ExitCode;

use client::{seg, Client, WriteOptions};
use error::{CtlError, Result};
use output::OutputArgs;

use resources::Kind;

/// Shown under `portico ctl --help` and in `docs/cli.md`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (also a dry run that would change something)
  1  any other error
  2  usage error (a missing flag, a confirmation needed without a terminal)
  3  not authenticated (401, or no token at all)
  4  forbidden (403: the role does not allow it)
  5  not found (404)
  6  conflict (409: exists already, in use, or the instance changed since the
     preview of a rollback or apply)
  7  invalid input (400, 413, 422, or a local file that does not parse)
  8  admin unreachable, or it answered 5xx

Errors go to stderr, data to stdout.";

/// `portico ctl …`
#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct CtlArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

/// Which admin, as whom: flags and environment first, then the config file.
#[derive(clap::Args)]
struct ConnectionArgs {
    /// The admin's URL (http://host:9180); default: the one of the last login.
    #[arg(long, global = true, env = "PORTICO_ADMIN")]
    admin: Option<String>,
    /// A token to send instead of the stored session (an API token for scripts; prefer
    /// the environment variable to the flag, which other users can see).
    #[arg(long, global = true, env = "PORTICO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The config file holding the session; default: ~/.config/portico/ctl.json.
    #[arg(long, global = true, env = "PORTICO_CONFIG")]
    config: Option<PathBuf>,
}

/// The instance a command works on.
#[derive(clap::Args, Clone, Debug)]
pub struct InstanceArgs {
    /// The cluster the instance belongs to.
    #[arg(long, env = "PORTICO_CLUSTER")]
    cluster: Option<String>,
    /// The instance.
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
    /// The instance's namespace (its id), or the namespace whose
    /// namespace_plugin_templates are meant; default: `default`.
    #[arg(long, env = "PORTICO_NAMESPACE")]
    namespace: Option<String>,
}

/// What a write carries besides its body.
#[derive(clap::Args, Clone, Debug)]
pub struct WriteArgs {
    /// The message of the revision this write makes.
    #[arg(short = 'm', long, value_parser = revision_message)]
    message: Option<String>,
    /// Check and show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A revision message the admin takes: one line, at most 1024 characters.
fn revision_message(text: &str) -> std::result::Result<String, String> {
    if text.chars().any(char::is_control) {
        return Err("must be one line, without control characters".into());
    }
    if text.chars().count() > 1024 {
        return Err("must be at most 1024 characters".into());
    }
    Ok(text.to_owned())
}

impl WriteArgs {
    fn options(&self) -> WriteOptions<'_> {
        WriteOptions {
            message: self.message.as_deref(),
            dry_run: self.dry_run,
            expected_revision: None,
        }
    }
}

#[derive(clap::Subcommand)]
enum CtlCommand {
    /// Sign in with a user's password; the session token is stored in the config file.
    Login {
        /// The user to sign in as.
        #[arg(long, short = 'u')]
        user: String,
        /// Read the password from the first line of stdin instead of asking for it.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the stored session and forget its token.
    Logout,
    /// Who the token belongs to, with its roles (GET /me).
    Whoami {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// API tokens for automation.
    #[command(subcommand)]
    Token(auth::TokenCommand),
    /// Show one object, or list them all without an id.
    Get {
        kind: Kind,
        id: Option<String>,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the objects of a kind.
    List {
        kind: Kind,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Create an object from a JSON or YAML file.
    Create {
        kind: Kind,
        /// The file (`-`: stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Replace an object with a JSON or YAML file (created when absent).
    Update {
        kind: Kind,
        /// Default: the file's `id` (`name` for clusters and users).
        id: Option<String>,
        /// The file (`-`: stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete an object (asks nothing).
    Delete {
        kind: Kind,
        id: String,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The instance's revisions, newest first.
    History {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only revisions older than this one (to page back).
        #[arg(long)]
        before: Option<u64>,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One revision and what it changed, per object and field.
    Revision {
        revision: u64,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The difference between two revisions.
    Diff {
        #[arg(long)]
        from: u64,
        /// Default: the current revision.
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Make the config what it was at a revision (0: empty), as a new revision; shows
    /// the changes first and asks.
    Rollback {
        revision: u64,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The instance's config as a file (no secrets), or with --namespace-wide every
    /// instance of the namespace.
    Export {
        /// Every instance of the namespace (--namespace, default `default`).
        #[arg(long)]
        namespace_wide: bool,
        /// Put certificate keys and credentials' secrets in the file, sealed under the
        /// admin's data key: applied again in the same namespace (an empty instance,
        /// say) it reproduces the config exactly. Editors only.
        #[arg(long)]
        sealed_secrets: bool,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "yaml")]
        format: declarative::FileFormat,
        #[command(flatten)]
        at: InstanceArgs,
    },
    /// Make the instance's config exactly a file's (or, with --namespace-wide, each
    /// instance a namespace file lists its own): shows the changes, asks, applies them
    /// as one revision per instance.
    Apply {
        /// The file (`-`: stdin), in the shape `export` writes.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// A namespace-wide file (`export --namespace-wide`) to the namespace
        /// (--namespace, default `default`).
        #[arg(long)]
        namespace_wide: bool,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        write: WriteArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Which route of the instance takes a request, with its plugins and the near
    /// misses.
    TestRoute(tester::TestRouteArgs),
    /// The admin process: who reconciles (GET /status, platform admin).
    Status {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Instances of a cluster (--cluster), a namespace (--namespace), or all.
    Instances {
        #[arg(long, env = "PORTICO_CLUSTER")]
        cluster: Option<String>,
        #[arg(long, env = "PORTICO_NAMESPACE")]
        namespace: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The instance's gateway nodes and the revision each serves.
    Nodes {
        #[command(flatten)]
        at: InstanceArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The admin API's OpenAPI document (GET /openapi.json).
    Openapi {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: declarative::FileFormat,
    },
    /// Shell completions for `portico` (source the output in your shell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs one `ctl` command; `cli` builds the whole `portico` command line (for
/// completions).
pub fn run(args: CtlArgs, cli: impl FnOnce() -> clap::Command) -> ExitCode {
    if let CtlCommand::Completion { shell } = args.command {
        clap_complete::generate(shell, &mut cli(), "portico", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return CtlError::Other(anyhow::anyhow!("cannot start: {e}")).report(),
    };
    match runtime.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

async fn dispatch(args: CtlArgs) -> Result<()> {
    let conn = &args.connection;
    match args.command {
        CtlCommand::Login {
            user,
            password_stdin,
        } => auth::login(&Session::open(conn, false)?, &user, password_stdin).await,
        CtlCommand::Logout => auth::logout(&Session::open(conn, false)?).await,
        CtlCommand::Whoami { output } => auth::whoami(&Session::open(conn, true)?, output).await,
        CtlCommand::Token(command) => auth::token(&Session::open(conn, true)?, command).await,
        CtlCommand::Get {
            kind,
            id,
            at,
            output,
        } => {
            let session = Session::open(conn, true)?;
            match id {
                Some(id) => resources::get(&session, kind, &id, &at, output).await,
                None => resources::list(&session, kind, &at, output).await,
            }
        }
        CtlCommand::List { kind, at, output } => {
            resources::list(&Session::open(conn, true)?, kind, &at, output).await
        }
        CtlCommand::Create {
            kind,
            file,
            at,
            write,
            output,
        } => {
            let session = Session::open(conn, true)?;
            resources::create(&session, kind, &file, &at, &write, output).await
        }
        CtlCommand::Update {
            kind,
            id,
            file,
            at,
            write,
            output,
        } => {
            let session = Session::open(conn, true)?;
            resources::update(&session, kind, id.as_deref(), &file, &at, &write, output).await
        }
        CtlCommand::Delete {
            kind,
            id,
            at,
            write,
            output,
        } => {
            let session = Session::open(conn, true)?;
            resources::delete(&session, kind, &id, &at, &write, output).await
        }
        CtlCommand::History {
            limit,
            before,
            at,
            output,
        } => {
            history::list(
                &Session::open(conn, true)?,
                &at.target()?,
                limit,
                before,
                output,
            )
            .await
        }
        CtlCommand::Revision {
            revision,
            at,
            output,
        } => history::show(&Session::open(conn, true)?, &at.target()?, revision, output).await,
        CtlCommand::Diff {
            from,
            to,
            at,
            output,
        } => history::diff(&Session::open(conn, true)?, &at.target()?, from, to, output).await,
        CtlCommand::Rollback {
            revision,
            yes,
            at,
            write,
            output,
        } => {
            let session = Session::open(conn, true)?;
            history::rollback(&session, &at.target()?, revision, yes, &write, output).await
        }
        CtlCommand::Export {
            namespace_wide,
            sealed_secrets,
            output,
            format,
            at,
        } => {
            let session = Session::open(conn, true)?;
            let what = at.subject(namespace_wide)?;
            declarative::export(&session, &what, format, sealed_secrets, output.as_deref()).await
        }
        CtlCommand::Apply {
            file,
            namespace_wide,
            yes,
            at,
            write,
            output,
        } => {
            let session = Session::open(conn, true)?;
            let to = at.subject(namespace_wide)?;
            declarative::apply(&session, &to, &file, yes, &write, output).await
        }
        CtlCommand::TestRoute(test) => tester::run(&Session::open(conn, true)?, &test).await,
        CtlCommand::Status { output } => status::status(&Session::open(conn, true)?, output).await,
        CtlCommand::Instances {
            cluster,
            namespace,
            output,
        } => {
            let session = Session::open(conn, true)?;
            status::instances(&session, cluster.as_deref(), namespace.as_deref(), output).await
        }
        CtlCommand::Nodes { at, output } => {
            status::nodes(&Session::open(conn, true)?, &at.target()?, output).await
        }
        CtlCommand::Openapi { output } => {
            status::openapi(&Session::open(conn, true)?, output).await
        }
        CtlCommand::Completion { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// The admin to talk to, the token to send, and where the config file is.
pub struct Session {
    pub client: Client,
    pub config_path: PathBuf,
    pub stored: config::Stored,
}

impl Session {
    /// Resolves the admin and the token: flags and environment first, then the config
    /// file (whose token goes only to the admin it came from). `need_token`: fail
    /// without one (exit 3) rather than let the admin answer 401.
    fn open(conn: &ConnectionArgs, need_token: bool) -> Result<Self> {
        let config_path = config::path(conn.config.as_deref())?;
        let stored = config::load(&config_path)?;
        let admin = match conn.admin.as_deref().filter(|a| !a.trim().is_empty()) {
            Some(given) => config::admin_base(given)?,
            None => stored.admin.clone().ok_or_else(|| {
                CtlError::Usage(
                    "which admin? give --admin URL or set PORTICO_ADMIN (or log in first)".into(),
                )
            })?,
        };
        let token = match conn.token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Some(token.to_owned()),
            _ if stored.admin.as_deref() == Some(admin.as_str()) => {
                if let (true, Some(_), Some(end)) = (need_token, &stored.token, stored.expires_at) {
                    if end <= now_secs() {
                        return Err(CtlError::SessionEnded(output::time_secs(&end.into())));
                    }
                }
                stored.token.clone()
            }
            _ => None,
        };
        if need_token && token.is_none() {
            return Err(CtlError::NotLoggedIn);
        }
        Ok(Self {
            client: Client::new(admin, token)?,
            config_path,
            stored,
        })
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One instance, as the API addresses it.
#[derive(Clone, Debug)]
pub struct Target {
    pub cluster: String,
    pub instance: String,
    pub namespace: Option<String>,
}

impl InstanceArgs {
    /// The instance named by the flags or the environment; a usage error naming what
    /// is missing.
    fn target(&self) -> Result<Target> {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let missing = |flag: &str, var: &str| {
            CtlError::Usage(format!(
                "this command works on an instance: give --{flag} (or set {var})"
            ))
        };
        Ok(Target {
            cluster: given(&self.cluster).ok_or_else(|| missing("cluster", "PORTICO_CLUSTER"))?,
            instance: given(&self.instance)
                .ok_or_else(|| missing("instance", "PORTICO_INSTANCE"))?,
            namespace: given(&self.namespace),
        })
    }
}

impl InstanceArgs {
    /// The instance, or with `namespace_wide` its namespace (`default` when none is
    /// given).
    fn subject(&self, namespace_wide: bool) -> Result<declarative::Subject> {
        if namespace_wide {
            Ok(declarative::Subject::Namespace(self.namespace_or_default()))
        } else {
            Ok(declarative::Subject::Instance(self.target()?))
        }
    }
}

impl InstanceArgs {
    /// The namespace given (`--namespace`, PORTICO_NAMESPACE), else `default`.
    fn namespace_or_default(&self) -> String {
        self.namespace
            .clone()
            .filter(|ns| !ns.trim().is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }
}

impl Target {
    /// `/clusters/{c}/instances/{i}`.
    pub fn path(&self) -> String {
        format!(
            "/clusters/{}/instances/{}",
            seg(&self.cluster),
            seg(&self.instance)
        )
    }

    /// The `namespace` query parameter, when one is given.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        self.namespace
            .iter()
            .map(|ns| ("namespace", ns.clone()))
            .collect()
    }

    /// `cluster/instance` for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.cluster, self.instance)
    }
}
