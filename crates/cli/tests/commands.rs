//! Every command of the built `keyhaven` binary, in both modes: on a local data
//! directory (the library, no server) and against a running `keyhaven serve`
//! (`--server`). The waiting `connect` is completed by a user agent at the real OAuth
//! server (oidc-provider) in the background, or times out; exit codes are checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use keyhaven_tests::{Decision, OidcProvider, UserAgent};
use serde_json::Value;

const SECRET: &str = "sk-cli-SECRET-7";
const ADMIN: &str = "kh_cli_admin";
const CREDS: &str = "khc_cli_credentials";

/// How the commands reach keyhaven.
#[derive(Debug, Clone)]
enum Mode {
    Local { dir: PathBuf, public_url: String },
    Server { url: String },
}

struct Setup {
    mode: Mode,
    /// The callback URL the provider must send users to.
    callback: String,
    _server: Option<ServerProcess>,
    dir: PathBuf,
    /// The test's own directory, removed when the test ends.
    _tmp: tempfile::TempDir,
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
    for v in [
        "KEYHAVEN_SERVER",
        "KEYHAVEN_API_KEY",
        "KEYHAVEN_CREDENTIALS_KEY",
        "KEYHAVEN_DATABASE_URL",
        "KEYHAVEN_MASTER_KEY",
        "KEYHAVEN_PUBLIC_URL",
    ] {
        c.env_remove(v);
    }
    c
}

/// A port free a moment ago: for addresses the command line must know in advance
/// (the OAuth callback a local `connect` serves) or that must answer nothing.
/// Servers the tests start listen on port 0 instead and say which port they got.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of this test's own (`name` only makes it easier to recognise).
fn fresh_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("kh-cmd-{name}-"))
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_owned();
    (tmp, dir)
}

fn local(name: &str) -> Setup {
    let (tmp, dir) = fresh_dir(name);
    let public_url = format!("http://127.0.0.1:{}", free_port());
    Setup {
        callback: format!("{public_url}/api/v1/oauth/callback"),
        mode: Mode::Local {
            dir: dir.join("data"),
            public_url,
        },
        _server: None,
        dir,
        _tmp: tmp,
    }
}

fn server(name: &str) -> Setup {
    let (tmp, dir) = fresh_dir(name);
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--api-key", ADMIN, "--credentials-key", CREDS])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(listening.starts_with("keyhaven listening"), "{listening}");
    let url = listening
        .split_whitespace()
        .nth(3)
        .filter(|u| u.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {listening:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Setup {
        callback: format!("{url}/api/v1/oauth/callback"),
        mode: Mode::Server { url },
        _server: Some(ServerProcess(child)),
        dir,
        _tmp: tmp,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl Setup {
    fn cmd(&self) -> Command {
        let mut c = bin();
        match &self.mode {
            Mode::Local { dir, public_url } => {
                c.env("KEYHAVEN_DATA_DIR", dir)
                    .env("KEYHAVEN_PUBLIC_URL", public_url);
            }
            Mode::Server { url } => {
                c.env("KEYHAVEN_SERVER", url)
                    .env("KEYHAVEN_API_KEY", ADMIN)
                    .env("KEYHAVEN_CREDENTIALS_KEY", CREDS)
                    // Never the local store in server mode: a data dir that does not exist.
                    .env("KEYHAVEN_DATA_DIR", self.dir.join("not-used"));
            }
        }
        c.current_dir(&self.dir);
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts a command in the background, its output piped.
    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "{args:?}: {}\n{}", out.stdout, out.stderr);
        out
    }
}

/// An error is one line on stderr, with the given exit code.
fn fails(out: &Out, code: i32, words: &str) {
    assert_eq!(
        out.code, code,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", out.stderr);
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(words),
        "{}",
        lines[0]
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Everything but OAuth: API-key connections (flag and prompt), listing and
/// filtering, tokens, status changes, deletes, integrations, apps, errors.
fn api_key_commands(s: &Setup) {
    // apps
    let apps = s.ok(&["apps", "openai", "--json"]).json();
    assert_eq!(apps[0]["slug"], "openai");
    let table = s.ok(&["apps", "github"]).stdout;
    assert!(
        table.lines().nth(1).unwrap().starts_with("github "),
        "{table}"
    );

    // connect with --param, and with the secret typed at the prompt (stdin here).
    let a = s
        .ok(&[
            "connect",
            "openai",
            "--entity",
            "alice",
            "--label",
            "team-a",
            "--param",
            &format!("api_key={SECRET}"),
            "--json",
        ])
        .json();
    assert_eq!(a["status"], "ACTIVE");
    let a_id = a["id"].as_str().unwrap().to_owned();
    let typed = s.run_with_stdin(
        &["connect", "openai", "--entity", "bob", "--json"],
        &format!("{SECRET}-bob\n"),
    );
    assert_eq!(typed.code, 0, "{}", typed.stderr);
    let b_id = typed.json()["id"].as_str().unwrap().to_owned();
    assert!(!typed.stdout.contains(SECRET) && !typed.stderr.contains(SECRET));
    // Nothing typed: a clear error, nothing stored.
    let none = s.run(&["connect", "openai", "--entity", "carol"]);
    fails(&none, 4, "api_key");

    // accounts list, with filters, as a table and as JSON.
    let all = s.ok(&["accounts", "list", "--json"]).json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let alice = s
        .ok(&["accounts", "list", "--entity", "alice", "--json"])
        .json();
    assert_eq!(alice["items"].as_array().unwrap().len(), 1);
    assert_eq!(alice["items"][0]["id"], a_id.as_str());
    let labelled = s
        .ok(&[
            "accounts", "list", "--label", "team-a", "--app", "openai", "--status", "active",
            "--json",
        ])
        .json();
    assert_eq!(labelled["items"].as_array().unwrap().len(), 1);
    let page = s.ok(&["accounts", "list", "--limit", "1", "--json"]).json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["nextCursor"].as_str().unwrap();
    let rest = s
        .ok(&["accounts", "list", "--cursor", next, "--json"])
        .json();
    assert_eq!(rest["items"][0]["id"], b_id.as_str());
    let table = s.ok(&["accounts", "list"]).stdout;
    assert!(
        table.starts_with("ID") && table.contains(&a_id) && table.contains("team-a"),
        "{table}"
    );
    let shown = s.ok(&["accounts", "show", &a_id]).stdout;
    assert!(
        shown.contains("ACTIVE") && shown.contains("alice") && !shown.contains(SECRET),
        "{shown}"
    );
    assert!(
        !s.ok(&["accounts", "list", "--json"])
            .stdout
            .contains(SECRET),
        "listings never hold secrets"
    );

    // token: the secret alone, for scripts; --json has all fields.
    let token = s.ok(&["token", &a_id]);
    assert_eq!(token.stdout.trim(), SECRET);
    assert!(
        !token.stderr.contains("warning"),
        "no warning when stdout is not a terminal"
    );
    assert_eq!(
        s.ok(&["token", &a_id, "--json"]).json()["credentials"]["api_key"],
        SECRET
    );

    // disable, enable, refresh; token on an inactive account fails with 5.
    assert_eq!(
        s.ok(&["accounts", "disable", &a_id, "--json"]).json()["status"],
        "INACTIVE"
    );
    fails(&s.run(&["token", &a_id]), 5, "INACTIVE");
    assert_eq!(
        s.ok(&["accounts", "enable", &a_id, "--json"]).json()["status"],
        "ACTIVE"
    );
    assert_eq!(
        s.ok(&["accounts", "refresh", &a_id, "--json"]).json()["status"],
        "ACTIVE"
    );

    // delete; then show is not found (3); a malformed id is invalid input (4).
    s.ok(&["accounts", "delete", &b_id]);
    fails(&s.run(&["accounts", "show", &b_id]), 3, &b_id);
    fails(&s.run(&["accounts", "show", "nope"]), 4, "nope");

    // integrations
    let ints = s.ok(&["integrations", "list", "--json"]).json();
    assert_eq!(ints.as_array().unwrap().len(), 1);
    let int_id = ints[0]["id"].as_str().unwrap().to_owned();
    let one = s.ok(&["integrations", "show", &int_id]).stdout;
    assert!(one.contains("openai") && one.contains("API_KEY"), "{one}");
    let made = s
        .ok(&[
            "integrations",
            "create",
            "github",
            "--client-id",
            "gh-id",
            "--client-secret",
            "gh-secret",
            "--scope",
            "repo",
            "--json",
        ])
        .json();
    assert_eq!(made["authScheme"], "OAUTH2");
    assert!(!made.to_string().contains("gh-secret"));
    let gh = made["id"].as_str().unwrap().to_owned();
    assert!(
        s.ok(&["integrations", "list", "--app", "github"])
            .stdout
            .contains(&gh)
    );
    s.ok(&["integrations", "delete", &gh]);
    fails(&s.run(&["integrations", "show", &gh]), 3, &gh);

    // An OAuth connect that nobody finishes: the timeout, exit 6.
    let made = s
        .ok(&[
            "integrations",
            "create",
            "github",
            "--client-id",
            "gh-id",
            "--client-secret",
            "gh-secret",
            "--json",
        ])
        .json();
    let waited = s.run(&[
        "connect",
        "github",
        "--integration",
        made["id"].as_str().unwrap(),
        "--timeout",
        "1s",
    ]);
    fails(&waited, 6, "still INITIATED");
    assert!(
        waited
            .stdout
            .contains("https://github.com/login/oauth/authorize?"),
        "{}",
        waited.stdout
    );
    // --no-wait prints the account and the URL and ends at once.
    let quick = s.ok(&["connect", "github", "--no-wait", "--json"]).json();
    assert_eq!(quick["connectionStatus"], "INITIATED");
    let id = quick["connectedAccountId"].as_str().unwrap();
    fails(
        &s.run(&["wait", id, "--timeout", "0.5s"]),
        6,
        "still INITIATED",
    );

    // Usage errors are 2, with clap's message.
    assert_eq!(s.run(&["accounts", "frobnicate"]).code, 2);
    assert_eq!(s.run(&["connect", "openai", "--timeout", "soon"]).code, 2);
}

/// The OAuth connect that waits, finished by the user in the background; then the
/// credentials at work: token, request through keyhaven, refresh.
fn oauth_commands(s: &Setup) {
    let rt = runtime();
    let Some(provider) = rt.block_on(OidcProvider::start_with_callback(600, &s.callback)) else {
        return;
    };
    let issuer = provider.issuer.clone();
    let made = s
        .ok(&[
            "integrations",
            "create",
            "oidc-test",
            "--scheme",
            "oauth2",
            "--client-id",
            "kh-basic",
            "--client-secret",
            "kh-basic-secret",
            "--config",
            &format!("authorize_url={issuer}/auth"),
            "--config",
            &format!("token_url={issuer}/token"),
            "--config",
            &format!("revocation_url={issuer}/token/revocation"),
            "--config",
            &format!("base_url={issuer}"),
            "--config",
            &format!("issuer={issuer}"),
            "--config",
            r#"authorize_params={"prompt":"consent"}"#,
            "--scope",
            "openid",
            "--scope",
            "offline_access",
            "--scope",
            "api",
            "--json",
        ])
        .json();
    let int_id = made["id"].as_str().unwrap().to_owned();
    let mut child = s.spawn(&[
        "connect",
        "--integration",
        &int_id,
        "--entity",
        "dora",
        "--timeout",
        "60s",
        "--json",
    ]);
    // With --json the URL is told on stderr, so stdout stays JSON.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line.split(": ").last().unwrap().trim().to_owned();
    assert!(url.starts_with(&format!("{issuer}/auth?")), "{line}");
    rt.block_on(async {
        let back = UserAgent::new()
            .authorize_to(&url, "dora", Decision::Approve, &s.callback)
            .await;
        // The browser follows the provider's redirect to keyhaven's callback: the
        // command's own listener (local mode) or the server's.
        let page = reqwest::get(back.as_str()).await.unwrap();
        assert_eq!(page.status(), 200);
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let account: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(account["status"], "ACTIVE");
    let id = account["id"].as_str().unwrap().to_owned();

    // The access token works at the provider; request sends it for us.
    let token = s.ok(&["token", &id]).stdout.trim().to_owned();
    let (status, me) = rt.block_on(provider.userinfo(&token));
    assert_eq!((status, me["sub"].as_str()), (200, Some("dora")));
    let me = s.ok(&["request", &id, "GET", "/me"]).json();
    assert_eq!(me["sub"], "dora");
    let full = s
        .ok(&[
            "request",
            &id,
            "get",
            "/me",
            "-H",
            "Accept: application/json",
            "--json",
        ])
        .json();
    assert_eq!(full["status"], 200);
    let missing = s.run(&["request", &id, "GET", "/no-such-path", "-i"]);
    assert_eq!(
        missing.code, 9,
        "an error status from the API: {}",
        missing.stdout
    );
    assert!(missing.stdout.starts_with("HTTP 404"), "{}", missing.stdout);
    fails(
        &s.run(&["request", &id, "GET", "https://elsewhere.example/me"]),
        4,
        "under the account's API",
    );
    // Every use is on record: the token printed (or read through the server), the
    // requests with their status, none with a query or a credential.
    let audit = s.ok(&["audit", &id, "--json"]).json();
    let entries = audit.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"token.printed") || actions.contains(&"credentials.read"),
        "{audit}"
    );
    let requests: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "request")
        .collect();
    assert_eq!(requests.len(), 3, "{audit}");
    assert_eq!(requests[2]["status"], 404);
    assert_eq!(requests[2]["path"], "/no-such-path");
    assert!(
        !audit.to_string().contains(&token),
        "no credential in the audit log"
    );
    let text = s.ok(&["audit", &id]).stdout;
    assert!(text.contains("request  sent  GET 127.0.0.1"), "{text}");
    // Paths that step out of the account's API are refused before anything is
    // sent, in local mode and with --server alike (where a URL parser would
    // resolve them onto keyhaven's own routes first).
    for (tricky, why) in [
        ("/../../connectedAccounts/x", "segment"),
        ("/%2e%2e/%2E%2e/connectedAccounts/x", "segment"),
        ("/a\\..\\..\\b", "backslash"),
    ] {
        fails(&s.run(&["request", &id, "DELETE", tricky]), 4, why);
    }
    s.ok(&["accounts", "show", &id]);
    // A mistyped header is not echoed: it is most often a credential.
    let typo = s.run(&[
        "request",
        &id,
        "GET",
        "/me",
        "-H",
        "Authorization=Bearer sekrit-77",
    ]);
    fails(&typo, 2, "not \"Name: value\"");
    assert!(!typo.stderr.contains("sekrit-77"), "{}", typo.stderr);

    // refresh: a new access token from the real server.
    let before = rt.block_on(provider.token_requests("refresh_token"));
    s.ok(&["accounts", "refresh", &id]);
    assert_eq!(
        rt.block_on(provider.token_requests("refresh_token")),
        before + 1
    );
    let fresh = s.ok(&["token", &id]).stdout.trim().to_owned();
    assert_ne!(fresh, token);

    // delete revokes the grant at the provider (the command waits for it locally;
    // the server does it in the background).
    assert!(rt.block_on(provider.introspect("kh-basic", &fresh)));
    s.ok(&["accounts", "delete", &id]);
    let mut revoked = false;
    for _ in 0..50 {
        if !rt.block_on(provider.introspect("kh-basic", &fresh)) {
            revoked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(revoked, "the access token is revoked");

    // The user denies: connect ends FAILED, exit 5.
    let mut child = s.spawn(&[
        "connect",
        "--integration",
        &int_id,
        "--entity",
        "eve",
        "--timeout",
        "60s",
    ]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut l = String::new();
        assert!(stdout.read_line(&mut l).unwrap() > 0, "no URL printed");
        if l.trim().starts_with("http") {
            break l.trim().to_owned();
        }
    };
    rt.block_on(async {
        let back = UserAgent::new()
            .authorize_to(&url, "eve", Decision::Deny, &s.callback)
            .await;
        reqwest::get(back.as_str()).await.unwrap();
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED") && err.contains("access_denied"),
        "{err}"
    );
}

#[test]
fn every_command_on_a_local_data_directory() {
    let s = local("local");
    api_key_commands(&s);
    oauth_commands(&s);
    // keys rotate: a new key, every secret re-encrypted, everything still readable.
    let report = s.ok(&["keys", "rotate", "--json"]).json();
    assert!(report["reencrypted"].as_u64().unwrap() >= 2, "{report}");
    let listed = s
        .ok(&["accounts", "list", "--entity", "alice", "--json"])
        .json();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.ok(&["token", &id]).stdout.trim(), SECRET);
    let again = s.ok(&["keys", "rotate", "--retire-old", "--json"]).json();
    assert_eq!(again["oldKeysRetired"], true);
    assert_eq!(s.ok(&["token", &id]).stdout.trim(), SECRET);
    let db = std::fs::read(Path::new(&s.dir).join("data/keyhaven.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(SECRET),
        "encrypted at rest"
    );
}

#[test]
fn every_command_against_a_server() {
    let s = server("server");
    api_key_commands(&s);
    oauth_commands(&s);
    // keys rotate runs where the store is, not through a server.
    fails(&s.run(&["keys", "rotate"]), 2, "without --server");
    // A wrong key: 7; no server there: 8.
    let mut wrong = s.cmd();
    wrong
        .env("KEYHAVEN_API_KEY", "kh_wrong")
        .args(["accounts", "list"]);
    let out = wrong.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut gone = s.cmd();
    gone.env(
        "KEYHAVEN_SERVER",
        format!("http://127.0.0.1:{}", free_port()),
    )
    .args(["accounts", "list"]);
    let out = gone.output().unwrap();
    assert_eq!(out.status.code(), Some(8));
    // token needs the credentials key: the admin key alone is refused.
    let id = s
        .ok(&["accounts", "list", "--entity", "alice", "--json"])
        .json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut admin_only = s.cmd();
    admin_only
        .env_remove("KEYHAVEN_CREDENTIALS_KEY")
        .args(["token", &id]);
    let out = admin_only.output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials key"));
    let audit = std::fs::read_to_string(s.dir.join("data/audit.log")).unwrap();
    assert!(
        audit.lines().count() >= 3 && !audit.contains(SECRET),
        "{audit}"
    );

    // keys rotate beside the running server, on its data directory: the server takes
    // the new key up, so what it writes afterwards needs no retired key (a store
    // opened with the key file alone reads everything) and it reads what was rewritten.
    let on_dir = || {
        let mut c = bin();
        c.env("KEYHAVEN_DATA_DIR", s.dir.join("data"))
            .current_dir(&s.dir);
        c
    };
    let rotated = on_dir()
        .args(["keys", "rotate", "--retire-old", "--json"])
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["oldKeysRetired"], true, "{rotated}");
    let after = s
        .ok(&[
            "connect",
            "openai",
            "--entity",
            "after-rotation",
            "--param",
            &format!("api_key={SECRET}-after"),
            "--json",
        ])
        .json();
    let after_id = after["id"].as_str().unwrap();
    assert_eq!(
        s.ok(&["token", after_id]).stdout.trim(),
        format!("{SECRET}-after")
    );
    let local = on_dir().args(["token", after_id]).output().unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        format!("{SECRET}-after")
    );
}

#[test]
fn completions_for_shells() {
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_keyhaven") && script.contains("accounts"),
        "{script}"
    );
    for shell in ["zsh", "fish"] {
        assert!(
            bin()
                .args(["completions", shell])
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    let help = bin().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes:"));
}

/// In a real terminal (tmux): the secret is asked for without echo, and the waiting
/// spinner is drawn, then cleared.
#[test]
fn the_prompt_hides_the_secret_and_the_spinner_spins_in_a_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        if std::env::var("KEYHAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("required test tool unavailable: tmux");
        }
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let s = local("tmux");
    let Mode::Local { dir, public_url } = &s.mode else {
        unreachable!()
    };
    // The directory's name is unique: so is the session's, in tmux's one server.
    let session = s
        .dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('.', "-");
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let wait_for = |text: &str| {
        for _ in 0..100 {
            let shown = screen();
            if shown.contains(text) {
                return shown;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the terminal never showed {text:?}:\n{}", screen());
    };
    let command = format!(
        "env -u KEYHAVEN_SERVER KEYHAVEN_DATA_DIR={} KEYHAVEN_PUBLIC_URL={public_url} {} connect openai --entity tess; echo EXIT=$?; sleep 30",
        dir.display(),
        env!("CARGO_BIN_EXE_keyhaven")
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &command,
    ]);
    wait_for("api_key (");
    tmux(&["send-keys", "-t", &session, SECRET, "Enter"]);
    let shown = wait_for("EXIT=");
    assert!(
        shown.contains("EXIT=0") && shown.contains("ACTIVE"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET), "the secret was echoed:\n{shown}");
    tmux(&["kill-session", "-t", &session]);

    // The spinner while waiting for an OAuth user who never comes.
    let made = s
        .ok(&[
            "integrations",
            "create",
            "github",
            "--client-id",
            "gh-id",
            "--client-secret",
            "gh-secret",
            "--json",
        ])
        .json();
    let command = format!(
        "env -u KEYHAVEN_SERVER KEYHAVEN_DATA_DIR={} KEYHAVEN_PUBLIC_URL={public_url} {} connect github --integration {} --timeout 3s; echo EXIT=$?; sleep 30",
        dir.display(),
        env!("CARGO_BIN_EXE_keyhaven"),
        made["id"].as_str().unwrap()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "40",
        &command,
    ]);
    let first = wait_for("waiting for the connection");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let later = screen();
    let spin = |s: &str| {
        s.lines()
            .find(|l| l.contains("waiting for the connection"))
            .map(str::to_owned)
    };
    assert_ne!(
        spin(&first),
        spin(&later),
        "the spinner line changes as it spins"
    );
    let end = wait_for("EXIT=");
    assert!(
        end.contains("EXIT=6") && end.contains("still INITIATED"),
        "{end}"
    );
    assert!(
        !end.contains("waiting for the connection"),
        "the spinner is cleared:\n{end}"
    );
    tmux(&["kill-session", "-t", &session]);
}

/// A request whose API cannot be reached is on record too, as `unreachable`, each
/// time, though the command exits with the error (8).
#[test]
fn a_request_that_fails_is_on_record() {
    let s = local("unreachable");
    // An API on a port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let int = s
        .ok(&[
            "integrations",
            "create",
            "openai",
            "--scheme",
            "API_KEY",
            "--config",
            &format!("base_url={dead}"),
            "--json",
        ])
        .json();
    let int_id = int["id"].as_str().unwrap();
    let account = s
        .ok(&[
            "connect",
            "--integration",
            int_id,
            "--param",
            &format!("api_key={SECRET}"),
            "--json",
        ])
        .json();
    let id = account["id"].as_str().unwrap();
    for attempt in 0..3 {
        let out = s.run(&["request", id, "GET", "/models"]);
        assert_eq!(out.code, 8, "unreachable: {}", out.stderr);
        let audit = s.ok(&["audit", id, "--json"]).json();
        let unreachable = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "request" && e["outcome"] == "unreachable")
            .count();
        assert_eq!(unreachable, attempt + 1, "{audit}");
    }
}
