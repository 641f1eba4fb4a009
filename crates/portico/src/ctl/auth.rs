//! Signing in and out, who the token belongs to, and API tokens. A session token is
//! kept in the config file and never printed; an API token is printed once, when it
//! is created (on stdout alone, so `$(portico ctl token create ci)` captures it).

use reqwest::Method;
use serde_json::{json, Value};

use super::client::{seg, Body, WriteOptions};
use super::config;
use super::error::{CtlError, Result};
use super::output::{self, text, time_secs, Column, OutputArgs};
use super::prompt;
use super::resources::roles;
use super::Session;

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed this once.
    Create {
        /// What the token is for.
        name: String,
        /// The token stops working after this many days; default: never.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Whose token (a platform admin may make one for another user); default: the
        /// caller.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List API tokens (never the tokens themselves).
    List {
        /// Whose tokens; default: the caller's.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an API token by its id.
    Delete {
        id: String,
        /// Whose token; default: the caller's.
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn login(session: &Session, user: &str, password_stdin: bool) -> Result<()> {
    let password = prompt::password(password_stdin, user)?;
    let answer = session
        .client
        .send(
            Method::POST,
            "/login",
            &[],
            Body::Json(json!({ "name": user, "password": password })),
            WriteOptions::default(),
        )
        .await
        .map_err(|e| match e {
            CtlError::Api { status: 401, .. } => CtlError::Api {
                status: 401,
                message: "wrong user name or password".into(),
                details: Vec::new(),
                origin: None,
            },
            other => other,
        })?;
    let token = answer.body["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the admin's sign-in answer has no token"))?;
    let stored = config::Stored {
        admin: Some(session.client.admin().to_owned()),
        token: Some(token.to_owned()),
        user: Some(user.to_owned()),
        expires_at: answer.body["expires_at"].as_i64(),
    };
    config::save(&session.config_path, &stored)?;
    eprintln!(
        "logged in to {} as {user}; the session lasts until {} (kept in {})",
        session.client.admin(),
        time_secs(&answer.body["expires_at"]),
        session.config_path.display()
    );
    Ok(())
}

/// Ends the stored session at the admin and forgets it here; a session the admin no
/// longer knows (expired) is forgotten all the same.
pub async fn logout(session: &Session) -> Result<()> {
    let Some(token) = session.stored.token.clone() else {
        eprintln!("not logged in");
        return Ok(());
    };
    let admin = session
        .stored
        .admin
        .clone()
        .unwrap_or_else(|| session.client.admin().to_owned());
    let client = super::client::Client::new(admin, Some(token))?;
    let ended = client
        .send(
            Method::POST,
            "/logout",
            &[],
            Body::None,
            WriteOptions::default(),
        )
        .await;
    let stored = config::Stored {
        token: None,
        user: None,
        expires_at: None,
        ..session.stored.clone()
    };
    config::save(&session.config_path, &stored)?;
    match ended {
        Ok(_) | Err(CtlError::Api { status: 401, .. }) => {
            eprintln!("logged out");
            Ok(())
        }
        Err(e) => {
            eprintln!("the token is forgotten here, but the admin did not end the session:");
            Err(e)
        }
    }
}

pub async fn whoami(session: &Session, output: OutputArgs) -> Result<()> {
    let answer = session.client.get("/me", &[]).await?;
    if output::print_raw(output.format, &answer.body)? {
        return Ok(());
    }
    let user = &answer.body["user"];
    print!(
        "{}",
        output::fields(&[
            ("user", text(&user["name"])),
            ("admin", session.client.admin().to_owned()),
            ("platform admin", output::yes_no(&user["platform_admin"])),
            ("roles", roles(&user["roles"])),
            (
                "token",
                if answer.body["session"].as_bool() == Some(true) {
                    "console session".to_owned()
                } else {
                    "API token".to_owned()
                }
            ),
        ])
    );
    Ok(())
}

pub async fn token(session: &Session, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            expires_in_days,
            user,
            output,
        } => {
            let user = owner(session, user).await?;
            let mut body = json!({ "name": name });
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let answer = session
                .client
                .send(
                    Method::POST,
                    &format!("/users/{}/tokens", seg(&user)),
                    &[],
                    Body::Json(body),
                    WriteOptions::default(),
                )
                .await?;
            if output::print_raw(output.format, &answer.body)? {
                return Ok(());
            }
            let token = answer.body["token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the admin's answer has no token"))?;
            eprintln!(
                "API token {} of {user} (id {}, expires {}); shown only this once:",
                text(&answer.body["name"]),
                text(&answer.body["id"]),
                expiry(&answer.body["expires_at"])
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::List { user, output } => {
            let user = owner(session, user).await?;
            let answer = session
                .client
                .get(&format!("/users/{}/tokens", seg(&user)), &[])
                .await?;
            if output::print_raw(output.format, &answer.body)? {
                return Ok(());
            }
            let columns = [
                Column {
                    header: "ID",
                    cell: |v| text(&v["id"]),
                },
                Column {
                    header: "NAME",
                    cell: |v| text(&v["name"]),
                },
                Column {
                    header: "CREATED",
                    cell: |v| time_secs(&v["created_at"]),
                },
                Column {
                    header: "EXPIRES",
                    cell: |v| expiry(&v["expires_at"]),
                },
                Column {
                    header: "LAST_USED",
                    cell: |v| time_secs(&v["last_used_at"]),
                },
            ];
            let items = output::items(&answer.body);
            print!("{}", output::table(&columns, items));
            Ok(())
        }
        TokenCommand::Delete { id, user } => {
            let user = owner(session, user).await?;
            session
                .client
                .send(
                    Method::DELETE,
                    &format!("/users/{}/tokens/{}", seg(&user), seg(&id)),
                    &[],
                    Body::None,
                    WriteOptions::default(),
                )
                .await?;
            println!("token {id} of {user} deleted");
            Ok(())
        }
    }
}

/// The user whose tokens a command handles: the one named, else the caller (asked
/// of the admin: the token may not be the stored session's).
async fn owner(session: &Session, given: Option<String>) -> Result<String> {
    if let Some(user) = given {
        return Ok(user);
    }
    let me = session.client.get("/me", &[]).await?;
    me.body["user"]["name"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the admin's answer to GET /me names no user").into())
}

fn expiry(value: &Value) -> String {
    if value.is_null() {
        "never".to_owned()
    } else {
        time_secs(value)
    }
}
