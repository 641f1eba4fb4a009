//! Questions to the person at the terminal: a confirmation before a rollback or an
//! apply, the password at login. Without a terminal nothing is asked: the command
//! says which flag to give instead (`--yes`, `--password-stdin`).

use std::io::{BufRead, IsTerminal, Write};

use super::error::{CtlError, Result};

/// Whether someone can answer: stdin and stderr (where the question goes) are both a
/// terminal.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks `question [y/N]` on the terminal; `true` only for yes. Without a terminal:
/// a usage error naming `--yes`.
pub fn confirm(question: &str) -> Result<bool> {
    if !interactive() {
        return Err(CtlError::Usage(format!(
            "{question}: no terminal to confirm on; give --yes to go ahead (or --dry-run to only preview)"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(anyhow::Error::from)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The password: the first line of stdin with `--password-stdin`, else asked on the
/// terminal without echo.
pub fn password(from_stdin: bool, user: &str) -> Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CtlError::Input(format!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else if interactive() {
        rpassword::prompt_password(format!("Password for {user}: "))
            .map_err(|e| CtlError::Input(format!("cannot read the password: {e}")))?
    } else {
        return Err(CtlError::Usage(
            "no terminal to ask the password on: give it on stdin with --password-stdin".into(),
        ));
    };
    if password.is_empty() {
        return Err(CtlError::Input("the password is empty".into()));
    }
    Ok(password)
}
