//! Where settings come from: flags > `HOOKLINE_*` variables > the TOML file
//! named by `--config` (`HOOKLINE_CONFIG`) > defaults.
//!
//! clap already knows every `serve` flag: its name, variable, default and
//! value parser. So the layers meet as clap input. The command line is parsed
//! once, to learn which flags were given; every flag that was not is filled
//! from its variable, else from its file key, as a `--flag=value` appended to
//! the command line, and the whole is parsed again. A value from any source
//! thus goes through the flag's own parser (a duration, an address, a CIDR
//! range) and ends up with the same type, and file keys and variables cannot
//! drift from the flags: the key of `--max-attempts` is `max_attempts` by
//! construction. Variables are read through a lookup function, not by clap, so
//! tests pass their own instead of changing the process's environment.
//!
//! A serde struct for the file was the alternative: it would restate every
//! setting once more, with a second parser per type.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::{DatabaseUrl, Invalid, ServeArgs, Settings};

/// The id of `--config`, the one flag without a file key.
const CONFIG: &str = "config";

/// The process's environment, for [`Settings::load`].
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// How a flag's value is written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A flag without a value (`--dev`): `true` or `false`.
    Switch,
    /// A repeatable flag: an array of strings.
    List,
    Integer,
    /// Everything else (addresses, durations, names, URLs): a string.
    Text,
}

/// One `serve` flag, as clap describes it.
struct Flag {
    /// clap's id (the field name).
    id: String,
    long: String,
    /// The file key: the long name with `_` for `-`.
    key: String,
    env: Option<String>,
    kind: Kind,
    /// Its value is never printed (clap hides it in `--help` too).
    secret: bool,
}

impl Flag {
    /// `--flag=value` for each value, or `--flag` for a switch that is on.
    fn tokens<'a>(&self, values: impl IntoIterator<Item = &'a std::ffi::OsStr>) -> Vec<OsString> {
        values
            .into_iter()
            .map(|value| {
                let mut token = OsString::from(format!("--{}=", self.long));
                token.push(value);
                token
            })
            .collect()
    }

    fn switch(&self, on: bool) -> Vec<OsString> {
        if on { vec![OsString::from(format!("--{}", self.long))] } else { Vec::new() }
    }

    /// The command-line form of a variable's value, read as clap reads variables.
    fn env_tokens(&self, value: &OsString) -> Result<Vec<OsString>, String> {
        match self.kind {
            Kind::Switch => match value.to_str() {
                Some("true") => Ok(self.switch(true)),
                Some("false") => Ok(self.switch(false)),
                _ => Err(format!("must be true or false for --{}, not {value:?}", self.long)),
            },
            _ => Ok(self.tokens([value.as_os_str()])),
        }
    }

    /// The command-line form of a file value, whose TOML type must fit the flag.
    fn file_tokens(&self, value: &toml::Value) -> Result<Vec<OsString>, String> {
        let text = |v: &str| self.tokens([std::ffi::OsStr::new(v)]);
        match (self.kind, value) {
            (Kind::Switch, toml::Value::Boolean(on)) => Ok(self.switch(*on)),
            (Kind::Switch, _) => Err("must be true or false".into()),
            (Kind::Integer, toml::Value::Integer(n)) => Ok(text(&n.to_string())),
            (Kind::Integer, _) => Err("must be an integer".into()),
            (Kind::Text, toml::Value::String(s)) => Ok(text(s)),
            (Kind::Text, _) => Err("must be a string".into()),
            (Kind::List, toml::Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().ok_or_else(|| "must be an array of strings".to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map(|items| self.tokens(items.into_iter().map(std::ffi::OsStr::new))),
            (Kind::List, _) => Err("must be an array of strings, such as [\"127.0.0.1/32\"]".into()),
        }
    }
}

/// The `serve` flags, as given to clap.
fn command() -> Command {
    ServeArgs::augment_args(Command::new("hookline serve")).no_binary_name(true)
}

/// The parser the layers go through: the flags without their variables,
/// which [`layer`] reads itself.
fn parser() -> Command {
    command().mut_args(|arg| arg.env(None))
}

fn flags() -> Vec<Flag> {
    use std::any::TypeId;
    let mut cmd = command();
    cmd.build();
    cmd.get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let integer = [TypeId::of::<u32>(), TypeId::of::<u64>(), TypeId::of::<usize>()]
                .iter()
                .any(|t| arg.get_value_parser().type_id() == *t);
            let kind = match arg.get_action() {
                ArgAction::SetTrue => Kind::Switch,
                ArgAction::Append => Kind::List,
                ArgAction::Set if integer => Kind::Integer,
                ArgAction::Set => Kind::Text,
                _ => return None, // --help
            };
            Some(Flag {
                id: arg.get_id().to_string(),
                long: long.to_owned(),
                key: long.replace('-', "_"),
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                kind,
                secret: arg.is_hide_env_values_set(),
            })
        })
        .collect()
}

/// clap's message without its "error: " prefix and usage hints.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// Parses one source's tokens for one flag alone, so that an error can say
/// where the value came from. The error completes a sentence whose subject
/// is the key or variable, as those of [`Flag::file_tokens`] do.
fn parse_alone(tokens: Vec<OsString>) -> Result<Vec<OsString>, String> {
    match parser().try_get_matches_from(&tokens) {
        Ok(_) => Ok(tokens),
        Err(e) => Err(format!("has an {}", clap_message(&e))),
    }
}

/// The file's values by flag id, each already in command-line form. Every
/// key is checked, also those that flags or variables override, so a mistake
/// in the file shows at once.
fn read_file(path: &Path, flags: &[Flag]) -> anyhow::Result<HashMap<String, Vec<OsString>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut values = HashMap::new();
    for (key, value) in &table {
        let Some(flag) = flags.iter().find(|f| f.key == *key && f.id != CONFIG) else {
            bail!(
                "{}: unknown key `{key}` (keys are the flags of `hookline serve --help`, with _ for -)",
                path.display()
            );
        };
        let tokens =
            flag.file_tokens(value).and_then(parse_alone).map_err(|e| anyhow!("{}: `{key}` {e}", path.display()))?;
        values.insert(flag.id.clone(), tokens);
    }
    Ok(values)
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Flag,
    Env(String),
    File,
    Default,
}

/// The flags of all sources, parsed as one command line.
pub(super) struct Layered {
    flags: Vec<Flag>,
    matches: ArgMatches,
    /// By flag id.
    sources: HashMap<String, Source>,
    file: Option<PathBuf>,
}

pub(super) fn layer(command_line: Vec<OsString>, env: &dyn Fn(&str) -> Option<OsString>) -> anyhow::Result<Layered> {
    let flags = flags();
    let given = parser().try_get_matches_from(&command_line).map_err(|e| anyhow!(clap_message(&e)))?;
    let on_command_line = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);
    let config = flags.iter().find(|f| f.id == CONFIG).expect("--config is a serve flag");
    let file = if on_command_line(CONFIG) {
        given.get_one::<PathBuf>(CONFIG).cloned()
    } else {
        config.env.as_deref().and_then(env).map(PathBuf::from)
    };
    let mut from_file = match &file {
        Some(path) => read_file(path, &flags)?,
        None => HashMap::new(),
    };

    let mut tokens = command_line;
    let mut sources = HashMap::new();
    for flag in &flags {
        let from_env = flag.env.as_deref().and_then(|name| Some((name, env(name)?)));
        let source = if on_command_line(&flag.id) {
            Source::Flag
        } else if let Some((name, value)) = from_env {
            let more = flag.env_tokens(&value).and_then(parse_alone).map_err(|e| anyhow!("{name} {e}"))?;
            tokens.extend(more);
            Source::Env(name.to_owned())
        } else if let Some(more) = from_file.remove(&flag.id) {
            tokens.extend(more);
            Source::File
        } else {
            Source::Default
        };
        sources.insert(flag.id.clone(), source);
    }
    let matches = parser().try_get_matches_from(&tokens).map_err(|e| anyhow!(clap_message(&e)))?;
    Ok(Layered { flags, matches, sources, file })
}

impl Layered {
    pub(super) fn settings(&self) -> anyhow::Result<Settings> {
        let args = ServeArgs::from_arg_matches(&self.matches).map_err(|e| anyhow!(clap_message(&e)))?;
        Settings::check(args).map_err(|e| anyhow!(self.explain(&e)))
    }

    /// The message of a refused value, naming where it came from.
    fn explain(&self, e: &Invalid) -> String {
        let Some(flag) = self.flags.iter().find(|f| f.long == e.flag) else { return e.to_string() };
        match (&self.sources[&flag.id], &self.file) {
            (Source::Env(name), _) => format!("{name} (--{}) {}", flag.long, e.problem),
            (Source::File, Some(path)) => format!("{}: `{}` {}", path.display(), flag.key, e.problem),
            _ => e.to_string(),
        }
    }

    /// The settings as a config file: every key with its value and where
    /// that came from; secrets and a database password as `***`.
    fn to_toml(&self) -> String {
        let mut out = String::new();
        let file = self.file.as_ref().map_or("no config file".to_owned(), |p| p.display().to_string());
        let _ = writeln!(out, "# hookline serve: flags > HOOKLINE_* variables > {file} > defaults");
        for flag in self.flags.iter().filter(|f| f.id != CONFIG) {
            let source = match &self.sources[&flag.id] {
                Source::Flag => format!("--{}", flag.long),
                Source::Env(name) => name.clone(),
                Source::File => "file".to_owned(),
                Source::Default => "default".to_owned(),
            };
            let raw: Vec<String> = self
                .matches
                .get_raw(&flag.id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let value = match flag.kind {
                Kind::Switch => Some(toml::Value::Boolean(self.matches.get_flag(&flag.id))),
                Kind::List => Some(toml::Value::Array(raw.into_iter().map(toml::Value::String).collect())),
                _ if raw.is_empty() => None,
                _ if flag.secret => Some(toml::Value::String("***".into())),
                Kind::Integer => {
                    Some(raw[0].parse().map_or_else(|_| toml::Value::String(raw[0].clone()), toml::Value::Integer))
                }
                // A PostgreSQL URL may carry a password; the rest of it helps.
                Kind::Text if flag.id == "database_url" => Some(toml::Value::String(
                    DatabaseUrl::parse(&raw[0]).map_or_else(|_| "***".to_owned(), |url| url.redacted()),
                )),
                Kind::Text => Some(toml::Value::String(raw[0].clone())),
            };
            let _ = match value {
                Some(value) => writeln!(out, "{} = {value}  # {source}", flag.key),
                None => writeln!(out, "# {} is not set", flag.key),
            };
        }
        out
    }
}

/// `hookline config`: the settings `hookline serve` would run with these
/// flags, checked, as TOML.
pub fn effective_toml(flags: ServeFlags, env: &dyn Fn(&str) -> Option<OsString>) -> anyhow::Result<String> {
    let layered = layer(flags.0, env)?;
    layered.settings()?;
    Ok(layered.to_toml())
}

/// The `serve` flags as typed on the command line, for [`Settings::load`].
///
/// As clap [`Args`] it is [`ServeArgs`]: clap checks and documents the flags
/// (`--help`) with the rest of the command line, then hands back what was
/// typed, to be layered over the variables and the file.
#[derive(Clone, Default)]
pub struct ServeFlags(Vec<OsString>);

impl IntoIterator for ServeFlags {
    type Item = OsString;
    type IntoIter = std::vec::IntoIter<OsString>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Names only: the values may be secrets.
impl std::fmt::Debug for ServeFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = self.0.iter().map(|t| t.to_string_lossy().split('=').next().unwrap_or_default().to_owned());
        f.debug_tuple("ServeFlags").field(&names.collect::<Vec<_>>()).finish()
    }
}

impl Args for ServeFlags {
    fn augment_args(cmd: Command) -> Command {
        ServeArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        ServeArgs::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for ServeFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut tokens = Vec::new();
        for flag in flags() {
            if matches.value_source(&flag.id) != Some(ValueSource::CommandLine) {
                continue;
            }
            match flag.kind {
                Kind::Switch => tokens.extend(flag.switch(matches.get_flag(&flag.id))),
                _ => tokens.extend(flag.tokens(matches.get_raw(&flag.id).into_iter().flatten())),
            }
        }
        Ok(Self(tokens))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    /// A config file that lives as long as the test.
    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn path(f: &tempfile::NamedTempFile) -> &str {
        f.path().to_str().unwrap()
    }

    /// A variable lookup over these pairs only, never the process's environment.
    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
    }

    fn load(flags: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        Settings::load(flags.iter().copied(), &env_of(vars))
    }

    fn refusal(flags: &[&str], vars: &[(&str, &str)]) -> String {
        format!("{:#}", load(flags, vars).err().expect("the settings are refused"))
    }

    #[test]
    fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
        let f = file("max_attempts = 3\n");
        let config = ["--config", path(&f)];
        // (file?, variable?, flag?, the attempts that win)
        let cases: &[(bool, Option<&str>, Option<&str>, u32)] = &[
            (false, None, None, 10),
            (true, None, None, 3),
            (true, Some("4"), None, 4),
            (true, Some("4"), Some("5"), 5),
            (true, None, Some("5"), 5),
            (false, Some("4"), Some("5"), 5),
            (false, Some("4"), None, 4),
        ];
        for &(with_file, var, flag, want) in cases {
            let mut flags: Vec<&str> = if with_file { config.to_vec() } else { Vec::new() };
            flags.extend(flag.map(|n| ["--max-attempts", n]).into_iter().flatten());
            let vars: Vec<(&str, &str)> = var.map(|n| ("HOOKLINE_MAX_ATTEMPTS", n)).into_iter().collect();
            let got = load(&flags, &vars).unwrap().delivery.retry.max_attempts;
            assert_eq!(got, want, "file {with_file}, variable {var:?}, flag {flag:?}");
        }
    }

    #[test]
    fn the_file_can_be_named_by_hookline_config_and_the_flag_wins() {
        let worker = file("role = \"worker\"\n");
        let api = file("role = \"api\"\n");
        assert_eq!(load(&[], &[("HOOKLINE_CONFIG", path(&worker))]).unwrap().role, Role::Worker);
        assert_eq!(load(&["--config", path(&api)], &[("HOOKLINE_CONFIG", path(&worker))]).unwrap().role, Role::Api);
    }

    #[test]
    fn file_values_keep_the_types_of_their_flags() {
        let f = file(
            r#"
            listen = "127.0.0.1:9090"
            dev = true
            allow_target_cidr = ["127.0.0.1/32", "10.0.0.0/8"]
            retry_schedule = "100ms,200ms"
            connect_timeout = "2s"
            max_in_flight = 8
            admin_token = "an-admin-token-from-the-file"
            database_url = "sqlite://from-file.db"
            "#,
        );
        let s = load(&["--config", path(&f)], &[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9090".parse().unwrap());
        assert!(s.api.ssrf.dev && s.delivery.ssrf.dev);
        assert_eq!(s.delivery.ssrf.allowed, ["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.delivery.retry.schedule.to_string(), "100ms,200ms");
        assert_eq!(s.delivery.connect_timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.delivery.ssrf.dns_timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.delivery.max_in_flight, 8);
        assert_eq!(s.api.admin_token.unwrap().expose(), "an-admin-token-from-the-file");
        assert_eq!(s.database.url, DatabaseUrl::Sqlite("from-file.db".into()));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_and_the_file() {
        for text in ["max_attemps = 3\n", "config = \"other.toml\"\n", "[delivery]\nlease = \"2m\"\n"] {
            let f = file(text);
            let key = text.trim_start_matches('[').split([' ', ']']).next().unwrap();
            let message = refusal(&["--config", path(&f)], &[]);
            assert!(message.contains(&format!("unknown key `{key}`")), "{text}: {message}");
            assert!(message.contains(path(&f)), "{text}: {message}");
        }
    }

    #[test]
    fn a_file_value_of_the_wrong_type_or_refused_names_its_key_and_the_file() {
        // (the file, the key the message must name)
        let cases = [
            ("max_attempts = \"ten\"", "max_attempts"),
            ("max_attempts = 1.5", "max_attempts"),
            ("max_attempts = -1", "max_attempts"),
            ("max_attempts = 0", "max_attempts"),
            ("listen = \"nowhere\"", "listen"),
            ("listen = 8080", "listen"),
            ("dev = \"yes\"", "dev"),
            ("allow_target_cidr = \"10.0.0.0/8\"", "allow_target_cidr"),
            ("allow_target_cidr = [\"10.0.0.0/99\"]", "allow_target_cidr"),
            ("retry_schedule = \"5s,later\"", "retry_schedule"),
            ("role = \"everything\"", "role"),
            ("lease = \"1s\"", "lease"),
            ("admin_token = \"short\"", "admin_token"),
            ("event_catalog = \"/nonexistent.json\"", "event_catalog"),
        ];
        for (text, key) in cases {
            let f = file(text);
            let message = refusal(&["--config", path(&f)], &[]);
            assert!(message.contains(&format!("`{key}`")) && message.contains(path(&f)), "{text}: {message}");
        }
    }

    #[test]
    fn a_file_value_is_checked_even_when_a_flag_overrides_it() {
        let f = file("max_attempts = \"ten\"\n");
        assert!(refusal(&["--config", path(&f), "--max-attempts", "4"], &[]).contains("`max_attempts`"));
    }

    #[test]
    fn a_file_that_is_no_toml_or_missing_is_refused_naming_it() {
        let f = file("max_attempts = [\n");
        assert!(refusal(&["--config", path(&f)], &[]).contains(path(&f)));
        assert!(refusal(&["--config", "/nonexistent/hookline.toml"], &[]).contains("/nonexistent/hookline.toml"));
    }

    #[test]
    fn a_refused_variable_is_named() {
        assert!(refusal(&[], &[("HOOKLINE_MAX_ATTEMPTS", "0")]).contains("HOOKLINE_MAX_ATTEMPTS"));
        assert!(refusal(&[], &[("HOOKLINE_MAX_ATTEMPTS", "ten")]).contains("HOOKLINE_MAX_ATTEMPTS"));
        assert!(refusal(&[], &[("HOOKLINE_DEV", "yes")]).contains("HOOKLINE_DEV"));
    }

    #[test]
    fn variables_read_like_clap_reads_them() {
        let s =
            load(&[], &[("HOOKLINE_DEV", "true"), ("HOOKLINE_ALLOW_TARGET_CIDR", "10.0.0.0/8,127.0.0.1/32")]).unwrap();
        assert!(s.api.ssrf.dev);
        assert_eq!(s.api.ssrf.allowed.len(), 2);
        assert!(!load(&[], &[("HOOKLINE_DEV", "false")]).unwrap().api.ssrf.dev);
    }

    fn effective(flags: &[&str], vars: &[(&str, &str)]) -> String {
        let flags = ServeFlags(flags.iter().map(OsString::from).collect());
        effective_toml(flags, &env_of(vars)).unwrap()
    }

    #[test]
    fn the_effective_settings_mask_secrets_and_say_where_each_value_came_from() {
        let f = file(
            r#"
            admin_token = "admin-token-from-the-file"
            database_url = "postgres://hookline:db-password@db.internal/hookline"
            max_attempts = 3
            "#,
        );
        let key = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LXByaW50IQ==";
        let text = effective(&["--config", path(&f), "--secret-key", key], &[("HOOKLINE_LISTEN", "127.0.0.1:7070")]);
        for secret in ["admin-token-from-the-file", "db-password", key] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["admin_token"].as_str(), Some("***"));
        assert_eq!(table["secret_key"].as_str(), Some("***"));
        assert_eq!(table["database_url"].as_str(), Some("postgres://hookline:***@db.internal/hookline"));
        assert_eq!(table["max_attempts"].as_integer(), Some(3));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.1:7070"));
        assert!(text.contains("max_attempts = 3  # file\n"), "{text}");
        assert!(text.contains("# HOOKLINE_LISTEN\n"), "{text}");
        assert!(text.contains("# --secret-key\n"), "{text}");
        assert!(text.contains("max_in_flight = 256  # default\n"), "{text}");
    }

    #[test]
    fn the_effective_settings_read_back_as_a_config_file_to_the_same_settings() {
        let first = effective(
            &["--dev", "--allow-target-cidr", "127.0.0.1/32", "--retry-schedule", "100ms,1s", "--role", "worker"],
            &[("HOOKLINE_MAX_IN_FLIGHT", "9")],
        );
        let f = file(&first);
        let again = effective(&["--config", path(&f)], &[]);
        let values = |text: &str| -> Vec<String> {
            text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split("  #").next().unwrap().to_owned()).collect()
        };
        assert_eq!(values(&first), values(&again));
        for flag in flags().iter().filter(|f| f.id != CONFIG) {
            let key = &flag.key;
            assert!(
                first.contains(&format!("\n{key} = ")) || first.contains(&format!("\n# {key} is not set")),
                "--{} has no key:\n{first}",
                flag.long
            );
        }
    }

    #[test]
    fn flags_from_the_command_line_reach_the_settings_as_typed() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "hookline",
            "serve",
            "--dev",
            "--allow-target-cidr",
            "10.0.0.0/8,127.0.0.1/32",
            "--allow-target-cidr=192.168.0.0/16",
            "--max-attempts",
            "4",
            "--admin-token",
            "an-admin-token-on-the-command-line",
        ])
        .unwrap();
        let crate::cli::Command::Serve(flags) = cli.command else { panic!("not serve") };
        assert!(!format!("{flags:?}").contains("an-admin-token"), "{flags:?}");
        let s = Settings::load(flags, &|_| None).unwrap();
        assert!(s.api.ssrf.dev);
        assert_eq!(s.api.ssrf.allowed.len(), 3);
        assert_eq!(s.delivery.retry.max_attempts, 4);
        assert_eq!(s.api.admin_token.unwrap().expose(), "an-admin-token-on-the-command-line");
    }
}
