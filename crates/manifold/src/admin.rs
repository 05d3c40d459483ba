//! `manifold users …` and `manifold keys …`: local users and API keys, in the store the config
//! names (`[store]`); `manifold policy explain`: what the config's roles decide for a user. A running gateway notices a withdrawal (a user disabled, a key revoked)
//! within a second (it reads the store's change counter every second), and the command waits
//! until every running gateway has before it says the change is made.

use std::{io::BufRead, path::Path};

use anyhow::{Context, bail};
use clap::Subcommand;
use manifold_config::{Config, StoreLocation};
use manifold_store::{Location, NewApiKey, NewUser, Store, StoreError, User};

#[derive(Subcommand)]
pub enum Users {
    /// Add a local user. Without --password-stdin a random password is made and printed once.
    Add {
        /// The login name.
        name: String,
        /// A Manifold role (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A group (repeat for several): `[groups.NAME]` in the config gives its members roles.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The user's e-mail address (shown to administrators only).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users: name, state, roles, groups, e-mail.
    List,
    /// Change a user's roles or groups (those given replace the user's own); every running
    /// gateway applies them at the user's next request once this returns.
    Set {
        /// The name, as for `disable`.
        name: String,
        #[arg(long)]
        issuer: Option<String>,
        /// The user's roles from now on (repeat for several).
        #[arg(long = "role", conflicts_with = "no_roles")]
        roles: Vec<String>,
        /// No roles of their own (only their groups').
        #[arg(long)]
        no_roles: bool,
        /// The user's groups from now on (repeat for several).
        #[arg(long = "group", conflicts_with = "no_groups")]
        groups: Vec<String>,
        /// No groups.
        #[arg(long)]
        no_groups: bool,
    },
    /// Disable a user: every running gateway refuses their API keys and tokens once this returns.
    Disable {
        /// The login name, or the name of a member who signs in through an identity provider
        /// (their e-mail, as `users list` shows it).
        name: String,
        /// The identity provider's issuer, when members of several have this name.
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Enable a disabled user again.
    Enable {
        /// The name, as for `disable`.
        name: String,
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Set a new password (random and printed once unless --password-stdin).
    Passwd {
        /// The login name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
pub enum Keys {
    /// Create an API key for a user, for some virtual servers; the key is printed once.
    Create {
        /// The user the key acts as.
        #[arg(long)]
        user: String,
        /// A virtual server the key may be used at (repeat for several; "*" for all).
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// How long the key is valid (e.g. 30d, 12h), or "never".
        #[arg(long, default_value = "90d")]
        expires: String,
        /// A label, to tell keys apart in `keys list`.
        #[arg(long, default_value = "api key")]
        name: String,
    },
    /// List API keys (never the keys themselves): id, user, servers, expiry, state.
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke an API key at once (on every gateway sharing the store).
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Say whether a user may use a tool (prompt, resource) of a virtual server, or connect to
    /// it, and which roles and rules decide.
    Explain(crate::explain::Ask),
}

/// `manifold policy …`. Exit status: 0 allowed, 1 a bad request (said why), 3 denied (2 is a
/// usage error).
pub async fn policy(config_path: &Path, cmd: PolicyCmd) -> anyhow::Result<bool> {
    let PolicyCmd::Explain(ask) = cmd;
    let config = crate::load(config_path)?;
    let policy = crate::role_policy(&config)?;
    // The store only for a user (an anonymous caller needs none).
    let store = match ask.anonymous {
        true => None,
        false => Some(open(&config).await?),
    };
    let answer = crate::explain::explain(&config, store.as_ref(), &policy, &ask)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{}", answer.headline());
    for line in &answer.because {
        println!("  - {line}");
    }
    Ok(answer.allowed)
}

/// The store the config names.
pub async fn open(config: &Config) -> anyhow::Result<Store> {
    let location = match &config.store {
        StoreLocation::Sqlite(dir) => Location::Sqlite(dir.clone()),
        StoreLocation::Postgres(url) => Location::Postgres(url.expose().to_owned()),
    };
    let shown = location.shown();
    Store::open(&location)
        .await
        .with_context(|| format!("cannot open the store {shown} (see [store] in docs/config.md)"))
}

/// With sign-in required and no user at all, the first start creates `admin` and prints its
/// password once, so the first person can sign in (and add the others).
pub async fn first_admin(store: &Store) -> anyhow::Result<()> {
    if !store.users().await?.is_empty() {
        return Ok(());
    }
    let pw = manifold_auth::new_password();
    let hash = manifold_auth::hash_password(&pw).map_err(anyhow::Error::msg)?;
    let added = store
        .add_user(&NewUser {
            name: "admin",
            email: None,
            password_hash: Some(&hash),
            roles: &["admin".to_owned()],
            groups: &[],
        })
        .await;
    match added {
        Ok(_) => {
            println!(
                "manifold created the first user: admin, password (shown once): {pw}\n  change it with `manifold users -c CONFIG passwd admin`; add others with `manifold users -c CONFIG add NAME`"
            );
            Ok(())
        }
        // Another gateway on the same store made it first.
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The user of this name: local or of an identity provider (of `issuer`, when given or when
/// several have it).
pub(crate) async fn any_user(
    store: &Store,
    name: &str,
    issuer: Option<&str>,
) -> anyhow::Result<User> {
    let mut found: Vec<User> = store
        .users()
        .await?
        .into_iter()
        .filter(|u| u.name == name && issuer.is_none_or(|i| u.issuer == i))
        .collect();
    match found.len() {
        0 => bail!("no user {name:?}: `manifold users list` shows them"),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several users are named {name:?}, of {}: say which with --issuer",
            found
                .iter()
                .map(|u| u.issuer.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn local_user(store: &Store, name: &str) -> anyhow::Result<User> {
    store
        .local_user(name)
        .await?
        .with_context(|| format!("no local user {name:?}: `manifold users list` shows them"))
}

/// Role and group names are single words (the store keeps them space-separated).
fn words_only(what: &str, names: &[String]) -> anyhow::Result<()> {
    for n in names {
        if n.is_empty() || n.chars().any(char::is_whitespace) {
            bail!("a {what} name is one word without spaces: {n:?}");
        }
    }
    Ok(())
}

/// The password: the first line of standard input, or a new random one (printed).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((manifold_auth::new_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.chars().count() < 12 {
        bail!("the password is too short: use at least 12 characters");
    }
    Ok((p, false))
}

pub async fn users(config_path: &Path, cmd: Users) -> anyhow::Result<()> {
    let config = crate::load(config_path)?;
    let store = open(&config).await?;
    match cmd {
        Users::Add {
            name,
            roles,
            groups,
            email,
            password_stdin,
        } => {
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_whitespace()) {
                bail!("a user name is 1 to 64 characters without spaces");
            }
            words_only("role", &roles)?;
            words_only("group", &groups)?;
            let (pw, made) = password(password_stdin)?;
            let hash = manifold_auth::hash_password(&pw).map_err(anyhow::Error::msg)?;
            match store
                .add_user(&NewUser {
                    name: &name,
                    email: email.as_deref(),
                    password_hash: Some(&hash),
                    roles: &roles,
                    groups: &groups,
                })
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict(m)) => {
                    bail!("{m}: choose another name, or `manifold users passwd {name}`")
                }
                Err(e) => return Err(e.into()),
            }
            println!("added user {name}");
            if made {
                println!("password (shown once): {pw}");
            }
        }
        Users::List => {
            let users = store.users().await?;
            if users.is_empty() {
                println!("no users yet: `manifold users add NAME`");
            }
            for u in users {
                let state = if u.disabled { "disabled" } else { "active" };
                let via = if u.issuer == manifold_store::LOCAL_ISSUER {
                    String::new()
                } else {
                    format!(" (signs in through {})", u.issuer)
                };
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.join(",")
                    }
                };
                let groups = if u.groups.is_empty() {
                    String::new()
                } else {
                    format!("groups: {} ", list(&u.groups))
                };
                println!(
                    "{:<24} {:<9} roles: {:<20} {groups}{}{via}",
                    u.name,
                    state,
                    list(&u.roles),
                    u.email.unwrap_or_default()
                );
            }
        }
        Users::Set {
            name,
            issuer,
            roles,
            no_roles,
            groups,
            no_groups,
        } => {
            let u = any_user(&store, &name, issuer.as_deref()).await?;
            words_only("role", &roles)?;
            words_only("group", &groups)?;
            let roles = (no_roles || !roles.is_empty()).then_some(roles);
            let groups = (no_groups || !groups.is_empty()).then_some(groups);
            if roles.is_none() && groups.is_none() {
                bail!(
                    "say what to set: --role R (or --no-roles) and/or --group G (or --no-groups)"
                );
            }
            if u.issuer != manifold_store::LOCAL_ISSUER {
                eprintln!(
                    "note: {name} signs in through {}: their next sign-in or refresh sets their roles and groups from the provider again",
                    u.issuer
                );
            }
            store
                .set_roles_and_groups(&u.id, roles.as_deref(), groups.as_deref())
                .await?;
            let behind = manifold_auth::until_gateways_notice(&store).await?;
            let now = store
                .user(&u.id)
                .await?
                .context("the user vanished meanwhile")?;
            println!(
                "{name} now holds roles: {}; groups: {} ({})",
                if now.roles.is_empty() {
                    "-".to_owned()
                } else {
                    now.roles.join(",")
                },
                if now.groups.is_empty() {
                    "-".to_owned()
                } else {
                    now.groups.join(",")
                },
                if behind.is_empty() {
                    "every running gateway applies them from their next request".to_owned()
                } else {
                    format!(
                        "applied from their next request by every running gateway but {}, which has not noticed yet (each checks the store every second)",
                        behind.join(", ")
                    )
                }
            );
        }
        Users::Disable { name, issuer } => {
            let u = any_user(&store, &name, issuer.as_deref()).await?;
            store.set_disabled(&u.id, true).await?;
            let grants = store
                .revoke_user_grants(&u.id, manifold_store::now())
                .await?;
            let behind = manifold_auth::until_gateways_notice(&store).await?;
            println!(
                "disabled user {name} ({grants} sign-ins revoked): {}",
                noticed(&behind, "their keys and tokens")
            );
        }
        Users::Enable { name, issuer } => {
            let u = any_user(&store, &name, issuer.as_deref()).await?;
            store.set_disabled(&u.id, false).await?;
            println!("enabled user {name}");
        }
        Users::Passwd {
            name,
            password_stdin,
        } => {
            let u = local_user(&store, &name).await?;
            let (pw, made) = password(password_stdin)?;
            let hash = manifold_auth::hash_password(&pw).map_err(anyhow::Error::msg)?;
            store.set_password_hash(&u.id, &hash).await?;
            println!("new password set for {name}");
            if made {
                println!("password (shown once): {pw}");
            }
        }
    }
    store.close().await;
    Ok(())
}

pub async fn keys(config_path: &Path, cmd: Keys) -> anyhow::Result<()> {
    let config = crate::load(config_path)?;
    let store = open(&config).await?;
    match cmd {
        Keys::Create {
            user,
            servers,
            expires,
            name,
        } => {
            let u = local_user(&store, &user).await?;
            for s in &servers {
                if s != "*" && !config.servers.contains_key(s) {
                    let known: Vec<&str> = config.servers.keys().map(String::as_str).collect();
                    bail!(
                        "no virtual server {s:?} in {} (it has: {})",
                        config_path.display(),
                        known.join(", ")
                    );
                }
            }
            let expires_at = if expires == "never" {
                None
            } else {
                let d = manifold_config::parse_duration(&expires).with_context(|| {
                    format!(
                        "--expires {expires:?} is not a duration like 30d or 12h, nor \"never\""
                    )
                })?;
                Some(manifold_store::now() + d.as_secs() as i64)
            };
            let (key, hash) = manifold_auth::new_key();
            let k = store
                .add_api_key(&NewApiKey {
                    user_id: &u.id,
                    name: &name,
                    hash: &hash,
                    servers: &servers,
                    expires_at,
                })
                .await?;
            println!(
                "created API key {} for {user} ({})",
                k.id,
                servers.join(", ")
            );
            println!("key (shown once, send it as `Authorization: Bearer <key>`): {key}");
        }
        Keys::List { user } => {
            let owner = match &user {
                Some(name) => Some(local_user(&store, name).await?),
                None => None,
            };
            let names: std::collections::HashMap<String, String> = store
                .users()
                .await?
                .into_iter()
                .map(|u| (u.id, u.name))
                .collect();
            let keys = store
                .api_keys(owner.as_ref().map(|u| u.id.as_str()))
                .await?;
            if keys.is_empty() {
                println!("no API keys: `manifold keys create --user NAME --server SERVER`");
            }
            let now = manifold_store::now();
            for k in keys {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if !k.live(now) {
                    "expired"
                } else {
                    "live"
                };
                let expires = k
                    .expires_at
                    .map_or("never".to_owned(), |t| format!("in {}", days(t - now)));
                println!(
                    "{}  {:<16} {:<8} {:<20} servers: {:<16} expires: {}",
                    k.id,
                    names.get(&k.user_id).map_or("?", String::as_str),
                    state,
                    k.name,
                    k.servers.join(","),
                    if state == "live" { expires } else { "-".into() }
                );
            }
        }
        Keys::Revoke { id } => match store.revoke_api_key(&id).await {
            Ok(()) => {
                let behind = manifold_auth::until_gateways_notice(&store).await?;
                println!("revoked API key {id}: {}", noticed(&behind, "it"));
            }
            Err(StoreError::NotFound(_)) => {
                bail!("no API key {id:?}: `manifold keys list` shows their ids")
            }
            Err(e) => return Err(e.into()),
        },
    }
    store.close().await;
    Ok(())
}

/// What a withdrawal's message says once the running gateways have been waited for.
fn noticed(behind: &[String], what: &str) -> String {
    if behind.is_empty() {
        return format!("every running gateway refuses {what} from now on");
    }
    format!(
        "refused from now on by every running gateway but {}, which has not noticed yet (each gateway checks the store every second; one that is stopping or overloaded notices when it catches up)",
        behind.join(", ")
    )
}

fn days(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3_600 => format!("{} hours", s / 3_600),
        s => format!("{} minutes", (s / 60).max(1)),
    }
}
