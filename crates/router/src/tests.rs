//! Catalog tests with plain data: naming, curation, collisions, routing, pagination.

use std::{path::Path, sync::Arc};

use manifold_config::Config;
use manifold_upstream::UpstreamCatalog;
use rmcp::model::{Resource, ResourceTemplate, Tool};

use crate::{Catalog, shorten};

fn tool(name: &str) -> Tool {
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "message": {"type": "string"}, "secret": {"type": "string"}, "mode": {"type": "string"} },
        "required": ["message", "secret"]
    });
    serde_json::from_value(serde_json::json!({ "name": name, "description": format!("{name} tool"), "inputSchema": schema })).unwrap()
}

fn upstream(tools: &[&str], resources: &[&str], templates: &[&str]) -> Arc<UpstreamCatalog> {
    Arc::new(UpstreamCatalog {
        tools: tools.iter().map(|t| tool(t)).collect(),
        resources: resources
            .iter()
            .map(|u| {
                serde_json::from_value::<Resource>(serde_json::json!({"uri": u, "name": u}))
                    .unwrap()
            })
            .collect(),
        resource_templates: templates
            .iter()
            .map(|u| {
                serde_json::from_value::<ResourceTemplate>(
                    serde_json::json!({"uriTemplate": u, "name": u}),
                )
                .unwrap()
            })
            .collect(),
        ..Default::default()
    })
}

/// Build a catalog for server "s" of `config` from the given connector catalogs.
fn check(config: &str, catalogs: &[Arc<UpstreamCatalog>]) -> Catalog {
    let c = Config::parse(config, Path::new("t.toml"), &|_: &str| None).unwrap();
    let spec = &c.servers["s"];
    let inputs: Vec<_> = spec
        .connectors
        .iter()
        .zip(catalogs.iter().cloned())
        .collect();
    Catalog::build(spec, &inputs, &crate::Reviews::default())
}

const TWO: &str = r#"
[connectors.alpha]
kind = "stdio"
command = "a"
[connectors.beta]
kind = "stdio"
command = "b"
[servers.s]
connectors = ["alpha", "beta"]
"#;

#[test]
fn names_are_namespaced_sorted_and_routed() {
    let cat = check(
        TWO,
        &[
            upstream(&["echo", "add"], &[], &[]),
            upstream(&["echo"], &[], &[]),
        ],
    );
    let names: Vec<&str> = cat.tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["alpha__add", "alpha__echo", "beta__echo"]);
    let r = &cat.tool_routes["beta__echo"];
    assert_eq!(
        (r.connector.as_str(), r.upstream_name.as_str()),
        ("beta", "echo")
    );
    assert!(cat.conflicts.is_empty());
}

#[test]
fn unprefixed_collision_keeps_the_first_and_reports() {
    let cfg = format!(
        "{TWO}[servers.s.curation.alpha]\nprefix = false\n[servers.s.curation.beta]\nprefix = false\n"
    );
    let cat = check(
        &cfg,
        &[
            upstream(&["echo"], &[], &[]),
            upstream(&["echo", "other"], &[], &[]),
        ],
    );
    assert_eq!(cat.tool_routes["echo"].connector.as_str(), "alpha");
    assert_eq!(cat.tools.len(), 2);
    assert_eq!(cat.conflicts.len(), 1, "{:?}", cat.conflicts);
    assert!(cat.conflicts[0].contains("\"echo\" from connector \"beta\""));
}

#[test]
fn curation_filters_renames_and_pins() {
    let cfg = format!(
        "{TWO}[servers.s.curation.alpha]\ninclude = [\"e*\", \"add\"]\nexclude = [\"*secret*\"]\n\
         [servers.s.curation.alpha.tools.echo]\nrename = \"say\"\ndescription = \"Say it\"\nhide_args = [\"mode\"]\npin_args = {{ secret = \"s3\" }}\n"
    );
    let cat = check(
        &cfg,
        &[
            upstream(&["echo", "add", "get_secret", "zzz"], &[], &[]),
            upstream(&[], &[], &[]),
        ],
    );
    let names: Vec<&str> = cat.tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["alpha__add", "alpha__say"]);
    let say = &cat.tools[1];
    assert_eq!(say.description.as_deref(), Some("Say it"));
    let schema = serde_json::Value::Object((*say.input_schema).clone());
    assert_eq!(
        schema["properties"],
        serde_json::json!({"message": {"type": "string"}})
    );
    assert_eq!(schema["required"], serde_json::json!(["message"]));
    let route = &cat.tool_routes["alpha__say"];
    assert_eq!(route.upstream_name, "echo");
    assert_eq!(route.pinned["secret"], "s3");
    assert!(
        route.strip.contains(&"mode".to_string()) && route.strip.contains(&"secret".to_string())
    );
}

#[test]
fn long_and_odd_names_are_shortened_stably() {
    let long = format!("connector__{}", "x".repeat(80));
    let s = shorten(&long);
    assert_eq!(s.len(), 64);
    assert_eq!(s, shorten(&long), "deterministic");
    assert_ne!(
        s,
        shorten(&format!("{long}y")),
        "distinct inputs stay distinct"
    );
    assert_eq!(shorten("ok_name-1.2"), "ok_name-1.2");
    let odd = shorten("has space/slash");
    assert!(
        odd.starts_with("has_space_slash_") && odd.len() == "has_space_slash_".len() + 8,
        "{odd}"
    );
    let cat = check(
        TWO,
        &[
            upstream(&[&"t".repeat(70)], &[], &[]),
            upstream(&[], &[], &[]),
        ],
    );
    assert!(cat.tools[0].name.len() <= 64);
    assert!(
        cat.tool_routes
            .values()
            .any(|r| r.upstream_name == "t".repeat(70))
    );
}

#[test]
fn resources_route_back_to_their_connector() {
    let cfg = format!("{TWO}[servers.s.curation.beta]\nprefix = false\n");
    let cat = check(
        &cfg,
        &[
            upstream(&[], &["test://a"], &["test://t/{id}"]),
            upstream(&[], &["file:///x"], &["mem://item/{id}"]),
        ],
    );
    let uris: Vec<&str> = cat.resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["alpha+test://a", "file:///x"]);
    assert_eq!(
        cat.route_resource("alpha+test://t/5").unwrap(),
        ("alpha".parse_id(), "test://t/5".into())
    );
    assert_eq!(
        cat.route_resource("mem://item/7").unwrap().0.as_str(),
        "beta"
    );
    // beta is the only unprefixed connector, so it owns other URIs too.
    assert_eq!(cat.route_resource("other://z").unwrap().0.as_str(), "beta");
    assert_eq!(
        cat.expose_uri(&"alpha".parse_id(), "test://a"),
        "alpha+test://a"
    );
    let all_prefixed = check(
        TWO,
        &[upstream(&[], &["test://a"], &[]), upstream(&[], &[], &[])],
    );
    assert!(
        all_prefixed.route_resource("test://a").is_none(),
        "prefixed URIs need their prefix"
    );
}

trait ParseId {
    fn parse_id(&self) -> manifold_config::ConnectorId;
}
impl ParseId for str {
    fn parse_id(&self) -> manifold_config::ConnectorId {
        manifold_config::ConnectorId::parse(self).unwrap()
    }
}

#[test]
fn fingerprints_detect_changes_only() {
    let a = check(
        TWO,
        &[upstream(&["echo"], &[], &[]), upstream(&[], &[], &[])],
    );
    let b = check(
        TWO,
        &[upstream(&["echo"], &[], &[]), upstream(&[], &[], &[])],
    );
    let c = check(
        TWO,
        &[
            upstream(&["echo", "new"], &[], &[]),
            upstream(&[], &["x://y"], &[]),
        ],
    );
    assert!(!b.changes_from(&a).any());
    let ch = c.changes_from(&a);
    assert!(ch.tools && ch.resources && !ch.prompts);
}

#[test]
fn tools_whose_schema_names_param_headers_are_marked_for_the_header_check() {
    let mut regional = tool("where");
    let mut schema = (*regional.input_schema).clone();
    schema["properties"]["region"] =
        serde_json::json!({"type": "string", "x-mcp-header": "Region"});
    regional.input_schema = Arc::new(schema);
    let catalog = Arc::new(UpstreamCatalog {
        tools: vec![tool("echo"), regional],
        ..Default::default()
    });
    let cat = check(TWO, &[catalog, upstream(&[], &[], &[])]);
    let marked: Vec<(&str, bool)> = cat
        .tools
        .iter()
        .zip(&cat.tool_param_headers)
        .map(|(t, m)| (t.name.as_ref(), *m))
        .collect();
    assert_eq!(marked, [("alpha__echo", false), ("alpha__where", true)]);
}
