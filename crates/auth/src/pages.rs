//! The authorization server's pages: sign-in, consent and errors. Plain HTML with every
//! value escaped, served `no-store`, never inside a frame (`frame-ancestors 'none'`, and
//! `X-Frame-Options` for old browsers), with no script at all.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use crate::oauth::Authz;

/// Escape text for HTML content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title} · Manifold</title><style>body{{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         label{{display:block;margin:.8rem 0 .2rem}}input[type=text],input[type=password]{{width:100%;padding:.5rem;box-sizing:border-box}}\
         button{{margin-top:1rem;padding:.5rem 1rem;margin-right:.5rem}}.problem{{color:#a00}}code{{background:#eee;padding:0 .2rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the forms, which the
        // same-origin check must refuse. `same-origin` still gives other sites nothing.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    page(status, title, &format!("<p>{}</p>", escape(message)))
}

/// The sign-in page: a link per identity provider (`(name, label)`), then the password form
/// unless `password` is off; `next` is the authorization request to continue.
pub fn login(
    next: &str,
    csrf: &str,
    problem: Option<&str>,
    providers: &[(&str, &str)],
    password: bool,
) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p)))
        .unwrap_or_default();
    let mut links = String::new();
    for (name, label) in providers {
        // `next` is a query string already: only escaped for HTML here.
        links.push_str(&format!(
            "<p><a class=\"provider\" href=\"/oauth/sso/{name}?{next}\">Sign in with {label}</a></p>",
            name = escape(name),
            next = escape(next),
            label = escape(label),
        ));
    }
    let form = if password {
        format!(
            "{or}<form method=\"post\" action=\"/oauth/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"next\" value=\"{next}\">\
             <label for=\"username\">User name</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
             <label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            or = if providers.is_empty() {
                ""
            } else {
                "<p>Or with a Manifold password:</p>"
            },
            csrf = escape(csrf),
            next = escape(next),
        )
    } else {
        String::new()
    };
    page(
        StatusCode::OK,
        "Sign in",
        &format!("{problem}{links}{form}"),
    )
}

/// Sign out of the gateway's sign-in session (the browser's, not the applications' tokens).
pub fn sign_out(user: &str, csrf: &str) -> Response {
    page(
        StatusCode::OK,
        "Sign out",
        &format!(
            "<p>Signed in as <b>{user}</b>. Signing out ends this browser's sign-in: the next application to connect asks you to sign in again. Applications already connected keep their access until it is revoked.</p>\
             <form method=\"post\" action=\"/oauth/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign out</button></form>",
            user = escape(user),
            csrf = escape(csrf),
        ),
    )
}

/// Ask the signed-in user whether the application may use the virtual server for them.
pub fn consent(a: &Authz, csrf: &str, user: &str) -> Response {
    let host = a
        .redirect_uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|x| x.to_string()))
        .unwrap_or_default();
    let p = &a.params;
    // A client known by its metadata document is whoever controls that address.
    let identified = p
        .client_id
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("https"))
        .and_then(|u| u.host().map(str::to_owned))
        .map(|h| format!(" (identified by <b>{}</b>)", escape(&h)))
        .unwrap_or_default();
    let mut hidden = String::new();
    for (k, v) in [
        ("response_type", Some(&p.response_type)),
        ("client_id", Some(&p.client_id)),
        ("redirect_uri", Some(&a.redirect_uri)),
        ("scope", p.scope.as_ref()),
        ("state", p.state.as_ref()),
        ("code_challenge", p.code_challenge.as_ref()),
        ("code_challenge_method", p.code_challenge_method.as_ref()),
        ("resource", p.resource.as_ref()),
    ] {
        if let Some(v) = v {
            hidden.push_str(&format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            ));
        }
    }
    page(
        StatusCode::OK,
        "Allow access?",
        &format!(
            "<p>Signed in as <b>{user}</b>.</p>\
             <p>The application <b>{name}</b>{identified} wants to use <code>{resource}</code> on your behalf: list and call its tools, prompts and resources as you may.</p>\
             <p>After you answer, your browser goes to <b>{host}</b>. Allow only if you started this from an application you trust on that address.</p>\
             <form method=\"post\" action=\"/oauth/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{hidden}\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            user = escape(user),
            name = escape(&a.client_name),
            resource = escape(&a.resource),
            host = escape(&host),
            csrf = escape(csrf),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
