//! `warren ctl`: rabbitmqctl-like commands, run against a broker's management HTTP API.
//!
//! Output is the product here: results go to stdout through `std::io::Write` (tab-separated
//! with rabbitmqctl's informational line and header, or JSON with `--formatter json`), errors to
//! stderr in one line. Exit codes are rabbitmqctl's (sysexits): 0 ok, 64 usage, 65 bad data,
//! 69 broker unavailable or credentials refused, 70 the command failed, 75 timed out.
//!
//! Files (`export_definitions`, `import_definitions`) are read before and written after the
//! HTTP exchange, outside the (current-thread) runtime.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Usage error (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Bad input data (EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;
/// Broker unreachable or credentials refused (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// The command failed (EX_SOFTWARE).
pub const EXIT_SOFTWARE: u8 = 70;
/// Timed out (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: u8 = 75;

/// `warren ctl` options and command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Base URL of the management HTTP API.
    #[arg(
        long,
        env = "WARREN_CTL_URL",
        default_value = "http://localhost:15672",
        global = true
    )]
    pub url: String,
    /// User for HTTP basic authentication.
    #[arg(long, env = "WARREN_CTL_USER", default_value = "guest", global = true)]
    pub user: String,
    /// Password for HTTP basic authentication.
    #[arg(
        long,
        env = "WARREN_CTL_PASSWORD",
        default_value = "guest",
        global = true,
        hide_env_values = true
    )]
    pub password: String,
    /// Virtual host the command applies to.
    #[arg(long, short = 'p', default_value = "/", global = true)]
    pub vhost: String,
    /// Suppress informational messages (rows and headers are still printed).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Suppress informational messages and table headers.
    #[arg(long, short = 's', global = true)]
    pub silent: bool,
    /// Do not print table headers.
    #[arg(long = "no-table-headers", global = true)]
    pub no_table_headers: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Formatter::Table, global = true)]
    pub formatter: Formatter,
    /// Seconds to wait for the broker's answer.
    #[arg(long, short = 't', default_value_t = 60, global = true)]
    pub timeout: u64,
    /// The command.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Formatter {
    /// Tab-separated columns, as rabbitmqctl prints them.
    Table,
    /// A JSON array of objects (lists) or the API's JSON.
    Json,
}

/// The commands, named as rabbitmqctl names them.
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum CtlCommand {
    /// Node status: versions, totals, listeners.
    Status,
    /// Wait until the broker's API answers (up to --timeout seconds).
    AwaitStartup,
    /// Queues and their properties [default columns: name messages].
    ListQueues { columns: Vec<String> },
    /// Exchanges [default columns: name type].
    ListExchanges { columns: Vec<String> },
    /// Bindings [default: source_name source_kind destination_name destination_kind routing_key arguments].
    ListBindings { columns: Vec<String> },
    /// Connections [default columns: user peer_host peer_port state].
    ListConnections { columns: Vec<String> },
    /// Channels [default columns: pid user consumer_count messages_unacknowledged].
    ListChannels { columns: Vec<String> },
    /// Consumers [default: queue_name channel_pid consumer_tag ack_required prefetch_count active activity_status arguments].
    ListConsumers { columns: Vec<String> },
    /// Users and their tags.
    ListUsers,
    /// Virtual hosts [default columns: name].
    ListVhosts { columns: Vec<String> },
    /// Permissions in the virtual host (-p).
    ListPermissions,
    /// Policies in the virtual host (-p).
    ListPolicies,
    /// Create a user.
    AddUser {
        username: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
    },
    /// Delete a user.
    DeleteUser { username: String },
    /// Change a user's password.
    ChangePassword {
        username: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
    },
    /// Set a user's tags (none: clear them).
    SetUserTags { username: String, tags: Vec<String> },
    /// Create a virtual host.
    AddVhost {
        #[arg(value_name = "VHOST")]
        name: String,
    },
    /// Delete a virtual host.
    DeleteVhost {
        #[arg(value_name = "VHOST")]
        name: String,
    },
    /// Set a user's permissions in the virtual host (-p).
    SetPermissions {
        username: String,
        conf: String,
        write: String,
        read: String,
    },
    /// Clear a user's permissions in the virtual host (-p).
    ClearPermissions { username: String },
    /// Set a user's topic permissions on an exchange in the virtual host (-p).
    SetTopicPermissions {
        username: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Set the virtual host's limits (-p) from a JSON object, e.g. '{"max-connections": 10}';
    /// a negative value removes that limit.
    SetVhostLimits {
        /// The limits, a JSON object of `max-connections` / `max-queues`.
        definition: String,
    },
    /// Set a policy in the virtual host (-p).
    SetPolicy {
        name: String,
        pattern: String,
        /// The policy definition, a JSON object.
        definition: String,
        /// Policy priority.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// What the policy applies to: queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
    },
    /// Clear a policy in the virtual host (-p).
    ClearPolicy { name: String },
    /// Purge a queue of the virtual host (-p).
    PurgeQueue { queue: String },
    /// Delete a queue of the virtual host (-p).
    DeleteQueue {
        queue: String,
        /// Only if it has no consumers.
        #[arg(long = "if-unused", short = 'u')]
        if_unused: bool,
        /// Only if it has no messages.
        #[arg(long = "if-empty", short = 'e')]
        if_empty: bool,
    },
    /// Close a connection (by its name as listed by list_connections name).
    CloseConnection {
        connection: String,
        explanation: String,
    },
    /// Export the definitions (JSON) to FILE, `-` for stdout.
    ExportDefinitions { file: String },
    /// Import the definitions (JSON) from FILE, `-` for stdin.
    ImportDefinitions { file: String },
}

/// A failure: its exit code and one line for stderr.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// What a command produced: bytes for stdout, and maybe a file to write.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    file: Option<(String, Vec<u8>)>,
}

/// Runs `warren ctl`.
pub fn run(args: &CtlArgs) -> ExitCode {
    let mut out = Output::default();
    let result = prepare(args).and_then(|input| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                fail(
                    EXIT_SOFTWARE,
                    format!("cannot start the async runtime: {e}"),
                )
            })?;
        runtime.block_on(execute(args, input, &mut out))
    });
    let write_result = finish(&out);
    let mut stderr = io::stderr();
    match (result, write_result) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(f), _) | (Ok(()), Err(f)) => {
            let _ = writeln!(stderr, "Error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Reads the input file of `import_definitions` (before the runtime starts).
fn prepare(args: &CtlArgs) -> Result<Option<Vec<u8>>, Failure> {
    let CtlCommand::ImportDefinitions { file } = &args.command else {
        return Ok(None);
    };
    let mut body = Vec::new();
    let read = if file == "-" {
        io::stdin().read_to_end(&mut body).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut body).map(|_| ()))
    };
    read.map_err(|e| fail(EXIT_DATAERR, format!("cannot read {file}: {e}")))?;
    if serde_json::from_slice::<Value>(&body).is_err() {
        return Err(fail(
            EXIT_DATAERR,
            format!("{file} is not a valid JSON document"),
        ));
    }
    Ok(Some(body))
}

/// Writes stdout and the output file (after the runtime is gone).
fn finish(out: &Output) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&out.stdout)
        .and_then(|()| stdout.flush())
        .map_err(|e| fail(EXIT_SOFTWARE, format!("cannot write to stdout: {e}")))?;
    if let Some((path, bytes)) = &out.file {
        std::fs::write(path, bytes)
            .map_err(|e| fail(EXIT_SOFTWARE, format!("cannot write {path}: {e}")))?;
    }
    Ok(())
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
fn enc(segment: &str) -> String {
    let mut s = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The management API as one user.
struct Client {
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

impl Client {
    fn new(args: &CtlArgs) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout.clamp(1, 86_400)))
            .build()
            .map_err(|e| fail(EXIT_SOFTWARE, format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            base: args.url.trim_end_matches('/').to_string(),
            user: args.user.clone(),
            password: args.password.clone(),
            http,
        })
    }

    /// Sends a request; `Ok` holds the status and the body for any HTTP answer.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        reason: Option<&str>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        if let Some(reason) = reason {
            req = req.header("X-Reason", reason);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                fail(
                    EXIT_TEMPFAIL,
                    format!("timed out waiting for the broker at {}", self.base),
                )
            } else if e.is_builder() {
                fail(EXIT_USAGE, format!("invalid --url {}: {e}", self.base))
            } else {
                fail(
                    EXIT_UNAVAILABLE,
                    format!(
                        "unable to reach the broker's management API at {}: is the broker \
                         running with its management listener on?",
                        self.base
                    ),
                )
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            fail(
                EXIT_UNAVAILABLE,
                format!("the broker at {} closed the connection: {e}", self.base),
            )
        })?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a request and turns error statuses into failures; `not_found` is the message for 404.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        not_found: &str,
    ) -> Result<Value, Failure> {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, bytes) = self.send(method, path, body, None).await?;
        check(status, &bytes, &self.user, not_found)?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, not_found: &str) -> Result<Value, Failure> {
        self.call(reqwest::Method::GET, path, None, not_found).await
    }
}

/// Maps an HTTP answer to a failure unless it is a success.
fn check(status: u16, bytes: &[u8], user: &str, not_found: &str) -> Result<(), Failure> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string());
    Err(match status {
        401 => fail(
            EXIT_UNAVAILABLE,
            format!("authentication failed for user '{user}': {reason}"),
        ),
        403 => fail(
            EXIT_SOFTWARE,
            format!("access refused for user '{user}': {reason}"),
        ),
        404 => fail(EXIT_SOFTWARE, not_found.to_string()),
        400 => fail(EXIT_DATAERR, reason),
        _ => fail(EXIT_SOFTWARE, format!("HTTP {status}: {reason}")),
    })
}

/// Appends one informational line unless quiet.
fn info(args: &CtlArgs, out: &mut Output, line: &str) {
    if !(args.quiet || args.silent) && args.formatter == Formatter::Table {
        out.stdout.extend_from_slice(line.as_bytes());
        out.stdout.push(b'\n');
    }
}

async fn execute(args: &CtlArgs, input: Option<Vec<u8>>, out: &mut Output) -> Result<(), Failure> {
    use reqwest::Method;
    let client = Client::new(args)?;
    let vhost = args.vhost.as_str();
    let v = enc(vhost);
    let no_vhost = format!("virtual host '{vhost}' does not exist");
    match &args.command {
        CtlCommand::Status => status(args, &client, out).await,
        CtlCommand::AwaitStartup => await_startup(args, &client, out).await,
        CtlCommand::ListQueues { columns } => {
            info(args, out, "Timeout: 60.0 seconds ...");
            info(args, out, &format!("Listing queues for vhost {vhost} ..."));
            let rows = client.get(&format!("/api/queues/{v}"), &no_vhost).await?;
            table(
                args,
                out,
                &rows,
                columns,
                &["name", "messages"],
                queue_field,
            )
        }
        CtlCommand::ListExchanges { columns } => {
            info(
                args,
                out,
                &format!("Listing exchanges for vhost {vhost} ..."),
            );
            let rows = client
                .get(&format!("/api/exchanges/{v}"), &no_vhost)
                .await?;
            table(args, out, &rows, columns, &["name", "type"], plain_field)
        }
        CtlCommand::ListBindings { columns } => {
            info(args, out, &format!("Listing bindings for vhost {vhost}..."));
            let rows = client.get(&format!("/api/bindings/{v}"), &no_vhost).await?;
            let default = [
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ];
            table(args, out, &rows, columns, &default, binding_field)
        }
        CtlCommand::ListConnections { columns } => {
            info(args, out, "Listing connections ...");
            let rows = client.get("/api/connections", "not found").await?;
            let default = ["user", "peer_host", "peer_port", "state"];
            table(args, out, &rows, columns, &default, pid_field)
        }
        CtlCommand::ListChannels { columns } => {
            info(args, out, "Listing channels ...");
            let rows = client.get("/api/channels", "not found").await?;
            let default = ["pid", "user", "consumer_count", "messages_unacknowledged"];
            table(args, out, &rows, columns, &default, pid_field)
        }
        CtlCommand::ListConsumers { columns } => {
            info(
                args,
                out,
                &format!("Listing consumers in vhost {vhost} ..."),
            );
            let rows = client
                .get(&format!("/api/consumers/{v}"), &no_vhost)
                .await?;
            let default = [
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "activity_status",
                "arguments",
            ];
            table(args, out, &rows, columns, &default, consumer_field)
        }
        CtlCommand::ListUsers => {
            info(args, out, "Listing users ...");
            let rows = client.get("/api/users", "not found").await?;
            table(args, out, &rows, &[], &["user", "tags"], user_field)
        }
        CtlCommand::ListVhosts { columns } => {
            info(args, out, "Listing vhosts ...");
            let rows = client.get("/api/vhosts", "not found").await?;
            table(args, out, &rows, columns, &["name"], plain_field)
        }
        CtlCommand::ListPermissions => {
            info(
                args,
                out,
                &format!("Listing permissions for vhost \"{vhost}\" ..."),
            );
            let rows = client
                .get(&format!("/api/vhosts/{v}/permissions"), &no_vhost)
                .await?;
            let default = ["user", "configure", "write", "read"];
            table(args, out, &rows, &[], &default, plain_field)
        }
        CtlCommand::ListPolicies => {
            info(
                args,
                out,
                &format!("Listing policies for vhost \"{vhost}\" ..."),
            );
            let rows = client.get(&format!("/api/policies/{v}"), &no_vhost).await?;
            let default = [
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ];
            table(args, out, &rows, &[], &default, plain_field)
        }
        CtlCommand::AddUser {
            username,
            new_password: password,
        } => {
            info(args, out, &format!("Adding user \"{username}\" ..."));
            let path = format!("/api/users/{}", enc(username));
            let (status, _) = client.send(Method::GET, &path, None, None).await?;
            if status == 200 {
                return Err(fail(
                    EXIT_SOFTWARE,
                    format!("user \"{username}\" already exists"),
                ));
            }
            let body = json!({"password": password, "tags": ""});
            client
                .call(Method::PUT, &path, Some(body), "not found")
                .await?;
            info(
                args,
                out,
                "Done. Don't forget to grant the user permissions to some virtual hosts! \
                 See 'rabbitmqctl help set_permissions' to learn more.",
            );
            Ok(())
        }
        CtlCommand::DeleteUser { username } => {
            info(args, out, &format!("Deleting user \"{username}\" ..."));
            let path = format!("/api/users/{}", enc(username));
            let missing = format!("user \"{username}\" does not exist");
            client.call(Method::DELETE, &path, None, &missing).await?;
            Ok(())
        }
        CtlCommand::ChangePassword {
            username,
            new_password: password,
        } => {
            info(
                args,
                out,
                &format!("Changing password for user \"{username}\" ..."),
            );
            let path = format!("/api/users/{}", enc(username));
            let missing = format!("user \"{username}\" does not exist");
            let user = client.get(&path, &missing).await?;
            let tags = user.get("tags").cloned().unwrap_or(Value::Null);
            let body = json!({"password": password, "tags": tags_string(&tags)});
            client
                .call(Method::PUT, &path, Some(body), &missing)
                .await?;
            Ok(())
        }
        CtlCommand::SetUserTags { username, tags } => {
            info(
                args,
                out,
                &format!(
                    "Setting tags for user \"{username}\" to [{}] ...",
                    tags.join(", ")
                ),
            );
            let path = format!("/api/users/{}", enc(username));
            let missing = format!("user \"{username}\" does not exist");
            let mut user = client.get(&path, &missing).await?;
            // Re-PUT the user with its password hash so that only the tags change.
            let mut body = Map::new();
            if let Some(hash) = user.get_mut("password_hash").map(Value::take) {
                body.insert("password_hash".into(), hash);
            }
            if let Some(algo) = user.get_mut("hashing_algorithm").map(Value::take) {
                body.insert("hashing_algorithm".into(), algo);
            }
            body.insert("tags".into(), Value::String(tags.join(",")));
            client
                .call(Method::PUT, &path, Some(Value::Object(body)), &missing)
                .await?;
            Ok(())
        }
        CtlCommand::AddVhost { name: vhost } => {
            info(args, out, &format!("Adding vhost \"{vhost}\" ..."));
            let path = format!("/api/vhosts/{}", enc(vhost));
            client.call(Method::PUT, &path, None, "not found").await?;
            Ok(())
        }
        CtlCommand::DeleteVhost { name: vhost } => {
            info(args, out, &format!("Deleting vhost \"{vhost}\" ..."));
            let path = format!("/api/vhosts/{}", enc(vhost));
            let missing = format!("virtual host '{vhost}' does not exist");
            client.call(Method::DELETE, &path, None, &missing).await?;
            Ok(())
        }
        CtlCommand::SetPermissions {
            username,
            conf,
            write,
            read,
        } => {
            info(
                args,
                out,
                &format!("Setting permissions for user \"{username}\" in vhost \"{vhost}\" ..."),
            );
            let path = format!("/api/permissions/{v}/{}", enc(username));
            let body = json!({"configure": conf, "write": write, "read": read});
            let missing = format!("user \"{username}\" or virtual host \"{vhost}\" does not exist");
            client
                .call(Method::PUT, &path, Some(body), &missing)
                .await?;
            Ok(())
        }
        CtlCommand::ClearPermissions { username } => {
            info(
                args,
                out,
                &format!("Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ..."),
            );
            let path = format!("/api/permissions/{v}/{}", enc(username));
            let missing =
                format!("no permissions for user \"{username}\" in virtual host \"{vhost}\"");
            client.call(Method::DELETE, &path, None, &missing).await?;
            Ok(())
        }
        CtlCommand::SetTopicPermissions {
            username,
            exchange,
            write,
            read,
        } => {
            info(
                args,
                out,
                &format!(
                    "Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{vhost}\" ..."
                ),
            );
            let path = format!("/api/topic-permissions/{v}/{}", enc(username));
            let body = json!({"exchange": exchange, "write": write, "read": read});
            let missing = format!("user \"{username}\" or virtual host \"{vhost}\" does not exist");
            client
                .call(Method::PUT, &path, Some(body), &missing)
                .await?;
            Ok(())
        }
        CtlCommand::SetVhostLimits { definition } => {
            info(
                args,
                out,
                &format!("Applying limits \"{definition}\" to vhost \"{vhost}\" ..."),
            );
            let limits: serde_json::Map<String, Value> =
                serde_json::from_str(definition).map_err(|e| {
                    fail(
                        EXIT_DATAERR,
                        format!("could not parse JSON document \"{definition}\": {e}"),
                    )
                })?;
            for (name, value) in &limits {
                let path = format!("/api/vhost-limits/{v}/{}", enc(name));
                client
                    .call(
                        Method::PUT,
                        &path,
                        Some(json!({ "value": value })),
                        &no_vhost,
                    )
                    .await?;
            }
            Ok(())
        }
        CtlCommand::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => {
            info(
                args,
                out,
                &format!(
                    "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" \
                     with priority \"{priority}\" for vhost \"{vhost}\" ..."
                ),
            );
            let def: Value = serde_json::from_str(definition).map_err(|e| {
                fail(
                    EXIT_DATAERR,
                    format!("could not parse JSON document \"{definition}\": {e}"),
                )
            })?;
            let path = format!("/api/policies/{v}/{}", enc(name));
            let body = json!({
                "pattern": pattern,
                "definition": def,
                "priority": priority,
                "apply-to": apply_to,
            });
            client
                .call(Method::PUT, &path, Some(body), &no_vhost)
                .await?;
            Ok(())
        }
        CtlCommand::ClearPolicy { name } => {
            info(
                args,
                out,
                &format!("Clearing policy \"{name}\" on vhost \"{vhost}\" ..."),
            );
            let path = format!("/api/policies/{v}/{}", enc(name));
            let missing =
                format!("parameter does not exist: policy \"{name}\" in vhost \"{vhost}\"");
            client.call(Method::DELETE, &path, None, &missing).await?;
            Ok(())
        }
        CtlCommand::PurgeQueue { queue } => {
            info(
                args,
                out,
                &format!("Purging queue '{queue}' in vhost '{vhost}' ..."),
            );
            let path = format!("/api/queues/{v}/{}/contents", enc(queue));
            let missing = format!("NOT_FOUND - no queue '{queue}' in vhost '{vhost}'");
            client.call(Method::DELETE, &path, None, &missing).await?;
            Ok(())
        }
        CtlCommand::DeleteQueue {
            queue,
            if_unused,
            if_empty,
        } => {
            info(
                args,
                out,
                &format!("Deleting queue '{queue}' on vhost '{vhost}' ..."),
            );
            let path = format!("/api/queues/{v}/{}", enc(queue));
            let missing = format!("NOT_FOUND - no queue '{queue}' in vhost '{vhost}'");
            let q = client.get(&path, &missing).await?;
            let messages = q.get("messages").and_then(Value::as_u64).unwrap_or(0);
            let mut query = Vec::new();
            if *if_unused {
                query.push("if-unused=true");
            }
            if *if_empty {
                query.push("if-empty=true");
            }
            let full = if query.is_empty() {
                path
            } else {
                format!("{path}?{}", query.join("&"))
            };
            client.call(Method::DELETE, &full, None, &missing).await?;
            info(
                args,
                out,
                &format!("Queue was successfully deleted with {messages} messages"),
            );
            Ok(())
        }
        CtlCommand::CloseConnection {
            connection,
            explanation,
        } => {
            info(
                args,
                out,
                &format!("Closing connection {connection}, reason: {explanation}..."),
            );
            let path = format!("/api/connections/{}", enc(connection));
            let (status, bytes) = client
                .send(Method::DELETE, &path, None, Some(explanation))
                .await?;
            let missing = format!("connection \"{connection}\" not found");
            check(status, &bytes, &client.user, &missing)
        }
        CtlCommand::ExportDefinitions { file } => {
            if file != "-" {
                info(
                    args,
                    out,
                    &format!("Exporting definitions in JSON to a file at \"{file}\" ..."),
                );
            }
            let (status, bytes) = client
                .send(Method::GET, "/api/definitions", None, None)
                .await?;
            check(status, &bytes, &client.user, "not found")?;
            if file == "-" {
                out.stdout.extend_from_slice(&bytes);
                out.stdout.push(b'\n');
            } else {
                out.file = Some((file.clone(), bytes));
            }
            Ok(())
        }
        CtlCommand::ImportDefinitions { file } => {
            let source = if file == "-" { "standard input" } else { file };
            info(
                args,
                out,
                &format!("Importing definitions in JSON from a file at \"{source}\" ..."),
            );
            let (status, bytes) = client
                .send(Method::POST, "/api/definitions", input, None)
                .await?;
            check(status, &bytes, &client.user, "not found")?;
            info(args, out, "Successfully started definition import. This process is asynchronous and can take some time.");
            Ok(())
        }
    }
}

async fn status(args: &CtlArgs, client: &Client, out: &mut Output) -> Result<(), Failure> {
    let overview = client.get("/api/overview", "not found").await?;
    if args.formatter == Formatter::Json {
        out.stdout
            .extend_from_slice(overview.to_string().as_bytes());
        out.stdout.push(b'\n');
        return Ok(());
    }
    let s = |v: &Value, k: &str| v.get(k).map(cell).unwrap_or_default();
    let node = s(&overview, "node");
    info(args, out, &format!("Status of node {node} ..."));
    let totals = overview
        .get("object_totals")
        .cloned()
        .unwrap_or(Value::Null);
    let mut text = String::new();
    text.push_str("Runtime\n\n");
    text.push_str(&format!("Product name: {}\n", s(&overview, "product_name")));
    text.push_str(&format!(
        "Product version: {}\n",
        s(&overview, "product_version")
    ));
    text.push_str(&format!(
        "RabbitMQ version: {}\n",
        s(&overview, "rabbitmq_version")
    ));
    text.push_str(&format!("Node name: {node}\n"));
    text.push_str(&format!("Cluster name: {}\n", s(&overview, "cluster_name")));
    text.push_str("\nTotals\n\n");
    for (label, key) in [
        ("Connection count", "connections"),
        ("Channel count", "channels"),
        ("Queue count", "queues"),
        ("Exchange count", "exchanges"),
        ("Consumer count", "consumers"),
    ] {
        text.push_str(&format!("{label}: {}\n", s(&totals, key)));
    }
    let queued = overview.get("queue_totals").cloned().unwrap_or(Value::Null);
    text.push_str(&format!("Messages: {}\n", s(&queued, "messages")));
    text.push_str("\nListeners\n\n");
    for l in overview
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "Interface: {}, port: {}, protocol: {}\n",
            s(l, "ip_address"),
            s(l, "port"),
            s(l, "protocol")
        ));
    }
    out.stdout.extend_from_slice(text.as_bytes());
    Ok(())
}

async fn await_startup(args: &CtlArgs, client: &Client, out: &mut Output) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    info(args, out, "Will wait for the broker to start ...");
    loop {
        match client
            .send(reqwest::Method::GET, "/api/overview", None, None)
            .await
        {
            Ok((status, bytes)) => return check(status, &bytes, &client.user, "not found"),
            Err(f) if f.code == EXIT_UNAVAILABLE && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(f) if f.code == EXIT_UNAVAILABLE => {
                return Err(fail(
                    EXIT_TEMPFAIL,
                    format!("the broker did not start within {} seconds", args.timeout),
                ))
            }
            Err(f) => return Err(f),
        }
    }
}

/// A field of a row as named by rabbitmqctl; `None` if the column is unknown.
type FieldFn = fn(&Value, &str) -> Option<Value>;

fn plain_field(row: &Value, col: &str) -> Option<Value> {
    row.get(col).cloned()
}

fn queue_field(row: &Value, col: &str) -> Option<Value> {
    match col {
        "pid" => row.get("name").cloned(),
        _ => row.get(col).cloned(),
    }
}

fn pid_field(row: &Value, col: &str) -> Option<Value> {
    match col {
        "pid" => row.get("name").cloned(),
        "vhost" => row.get("vhost").cloned(),
        _ => row.get(col).cloned(),
    }
}

fn binding_field(row: &Value, col: &str) -> Option<Value> {
    match col {
        "source_name" => row.get("source").cloned(),
        "source_kind" => Some(Value::String("exchange".into())),
        "destination_name" => row.get("destination").cloned(),
        "destination_kind" => row.get("destination_type").cloned(),
        _ => row.get(col).cloned(),
    }
}

fn consumer_field(row: &Value, col: &str) -> Option<Value> {
    match col {
        "queue_name" => row.pointer("/queue/name").cloned(),
        "channel_pid" => row.pointer("/channel_details/name").cloned(),
        "activity_status" => row
            .get("activity_status")
            .cloned()
            .or_else(|| Some(Value::String("up".into()))),
        _ => row.get(col).cloned(),
    }
}

fn user_field(row: &Value, col: &str) -> Option<Value> {
    match col {
        "user" => row.get("name").cloned(),
        "tags" => Some(Value::String(format!(
            "[{}]",
            tags_string(row.get("tags").unwrap_or(&Value::Null)).replace(',', ", ")
        ))),
        _ => row.get(col).cloned(),
    }
}

/// Tags as the API may give them (a list, or a comma-separated string) as `a,b`.
fn tags_string(tags: &Value) -> String {
    match tags {
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

/// A value as rabbitmqctl prints it in a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) => v.to_string(),
        Value::Object(map) if map.is_empty() => "[]".to_string(),
        Value::Object(_) => v.to_string(),
    }
}

/// Prints `rows` (a JSON array) as a table of `columns` (default ones if empty), or as JSON.
fn table(
    args: &CtlArgs,
    out: &mut Output,
    rows: &Value,
    columns: &[String],
    default: &[&str],
    field: FieldFn,
) -> Result<(), Failure> {
    let columns: Vec<String> = if columns.is_empty() {
        default.iter().map(|c| (*c).to_string()).collect()
    } else {
        columns.to_vec()
    };
    let empty = Vec::new();
    let rows = rows.as_array().unwrap_or(&empty);
    // A column no row knows is a usage error, as rabbitmqctl's "Info key(s) ... are not supported".
    if let Some(first) = rows.first() {
        let unknown: Vec<&str> = columns
            .iter()
            .filter(|c| field(first, c).is_none() && !default.contains(&c.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(fail(
                EXIT_USAGE,
                format!("Info key(s) {} are not supported", unknown.join(",")),
            ));
        }
    }
    if args.formatter == Formatter::Json {
        let list: Vec<Value> = rows
            .iter()
            .map(|row| {
                let mut obj = Map::new();
                for c in &columns {
                    obj.insert(c.clone(), field(row, c).unwrap_or(Value::Null));
                }
                Value::Object(obj)
            })
            .collect();
        out.stdout
            .extend_from_slice(Value::Array(list).to_string().as_bytes());
        out.stdout.push(b'\n');
        return Ok(());
    }
    if !(args.silent || args.no_table_headers) {
        out.stdout.extend_from_slice(columns.join("\t").as_bytes());
        out.stdout.push(b'\n');
    }
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| field(row, c).map(|v| cell(&v)).unwrap_or_default())
            .collect();
        out.stdout.extend_from_slice(cells.join("\t").as_bytes());
        out.stdout.push(b'\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommand_arguments_do_not_clobber_global_options() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            ctl: CtlArgs,
        }
        let t = T::try_parse_from(["t", "--password", "pw", "add_user", "bob", "secret"])
            .expect("parse");
        assert_eq!(t.ctl.password, "pw");
        match t.ctl.command {
            CtlCommand::AddUser {
                username,
                new_password,
            } => assert_eq!(
                (username.as_str(), new_password.as_str()),
                ("bob", "secret")
            ),
            other => panic!("{other:?}"),
        }
        let t = T::try_parse_from(["t", "add_vhost", "v", "-p", "/"]).expect("parse");
        assert_eq!(t.ctl.vhost, "/");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(enc("/"), "%2F");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("q-1.x_~"), "q-1.x_~");
    }

    #[test]
    fn cells_print_like_rabbitmqctl() {
        assert_eq!(cell(&json!({})), "[]");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(
            user_field(&json!({"name": "u", "tags": ["a", "b"]}), "tags"),
            Some(json!("[a, b]"))
        );
    }
}
