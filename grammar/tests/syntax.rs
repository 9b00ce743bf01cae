//! The constant language and compile-time control flow as parsed: operator
//! precedence (shown through the AST's fully parenthesized `Display`), strings,
//! lists, indexing, `if` expressions and statements, `from` on params, and the
//! words that became keywords.

use moec_grammar::ast::{ExprKind, Item, Param, Stmt};
use moec_grammar::{parse, parse_expr};

fn shown(text: &str) -> String {
    parse_expr(text)
        .unwrap_or_else(|e| panic!("{text}: {e:?}"))
        .to_string()
}

fn params(source: &str) -> Vec<Param> {
    parse(source)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .items
        .into_iter()
        .filter_map(|i| match i {
            Item::Param(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn operators_bind_in_order() {
    assert_eq!(
        shown("not a < 1 and b == 2 or c"),
        "((not (a < 1) and (b == 2)) or c)"
    );
    assert_eq!(shown("a or b and c"), "(a or (b and c))");
    assert_eq!(shown("a + 1 >= b * 2"), "((a + 1) >= (b * 2))");
    assert_eq!(shown("x != y"), "(x != y)");
    assert_eq!(shown("a <= b"), "(a <= b)");
    assert_eq!(shown("-l[0] * 2 + 1"), "((-l[0] * 2) + 1)");
    assert_eq!(shown("l[i + 1][0]"), "l[(i + 1)][0]");
    assert_eq!(shown("len([1, 2]) > 0"), "(len([1, 2]) > 0)");
    // `or`/`and`/`not` need a word boundary: these are names.
    assert_eq!(
        shown("order + notes + android"),
        "((order + notes) + android)"
    );
}

#[test]
fn if_expressions_extend_to_the_right() {
    assert_eq!(
        shown("if a < 2 then 1 else 2 + 3"),
        "(if (a < 2) then 1 else (2 + 3))"
    );
    assert_eq!(
        shown("1 + (if c then 2 else 3)"),
        "(1 + (if c then 2 else 3))"
    );
    assert_eq!(
        shown("f(x, k = if c then \"a\" else \"b\")"),
        "f(x, k = (if c then \"a\" else \"b\"))"
    );
    let e = parse_expr("  if c then 1 else 2  ").unwrap();
    assert_eq!((e.span.start, e.span.end), (2, 20));
}

#[test]
fn strings_lists_and_indexing() {
    let e = parse_expr(r#"["full_attention", "sliding_attention"]"#).unwrap();
    let ExprKind::List(items) = &e.kind else {
        panic!("{e:?}")
    };
    assert_eq!(items[1].kind, ExprKind::Str("sliding_attention".into()));
    assert_eq!((items[1].span.start, items[1].span.end), (19, 38));
    assert_eq!(parse_expr("[]").unwrap().kind, ExprKind::List(vec![]));
    let e = parse_expr("types[layer]").unwrap();
    assert!(matches!(e.kind, ExprKind::Index { .. }));
    assert_eq!((e.span.start, e.span.end), (0, 12));
    assert!(parse_expr("types[]").is_err());
}

#[test]
fn params_take_config_paths_after_from() {
    let ps = params(
        r#"model m {
             param rope_theta = 10000.0 from "rope_parameters.rope_theta", "rope_theta"
             param layer_types = ["full_attention"]
             param rope_type = "default"
           }"#,
    );
    let from: Vec<&str> = ps[0].from.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(from, ["rope_parameters.rope_theta", "rope_theta"]);
    assert!(ps[1].from.is_empty());
    assert_eq!(ps[2].value.kind, ExprKind::Str("default".into()));
}

#[test]
fn if_statements_chain_and_nest() {
    let spec = parse(
        "model m {
           repeat layer in 4 {
             if layer < 1 { let a = x } else if layer == 2 { if t { let b = x } } else { x = x }
           }
           if flag { output y = x }
         }",
    )
    .unwrap();
    let Item::Repeat(r) = &spec.items[0] else {
        panic!()
    };
    let Stmt::If(i) = &r.body[0] else { panic!() };
    assert_eq!(i.branches.len(), 2);
    assert_eq!(i.branches[0].cond.to_string(), "(layer < 1)");
    assert!(matches!(i.otherwise[..], [Stmt::Assign(_)]));
    let lets: Vec<&str> = r.body[0]
        .lets()
        .iter()
        .map(|l| l.name.name.as_str())
        .collect();
    assert_eq!(lets, ["a", "b"]);
    let Item::Stmt(Stmt::If(top)) = &spec.items[1] else {
        panic!()
    };
    assert!(top.otherwise.is_empty());
}

#[test]
fn new_keywords_are_not_names() {
    for word in ["if", "then", "else", "and", "or", "not", "from"] {
        let source = format!("model m {{ param {word} = 1 }}");
        let e = parse(&source).unwrap_err();
        assert_eq!(e.message, format!("expected a name, found `{word}`"));
    }
    for word in ["iffy", "order", "note", "elsewhere", "fromage", "android"] {
        let source = format!("model m {{ param {word} = 1 }}");
        assert!(parse(&source).is_ok(), "{word}");
    }
}

#[test]
fn deeply_nested_ifs_are_an_error_not_a_crash() {
    for depth in [65, 5_000] {
        let source = format!(
            "model m {{ {} }}",
            "if c { ".repeat(depth) + &"}".repeat(depth)
        );
        let e = parse(&source).unwrap_err();
        assert!(!e.message.is_empty());
    }
    let ok = format!("model m {{ {} }}", "if c { ".repeat(64) + &"}".repeat(64));
    assert!(parse(&ok).is_ok());
}

#[test]
fn router_is_a_name_too() {
    let spec = parse(
        "model m {
          router router(h: [n, 4]) { logits = linear(h, 4) select = topk(scores, 2) }
          let router_out = 1
          router = 2
          let y = moe(x, experts = 4 * e, router = router)
          weights { router.logits = \"mlp.router.weight\" }
        }",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let Item::Router(r) = &spec.items[0] else {
        panic!("{:?}", spec.items[0])
    };
    assert_eq!(r.name.name, "router");
    assert!(matches!(spec.items[2], Item::Stmt(Stmt::Assign(_))));
    let Item::Weights(w) = &spec.items[4] else {
        panic!()
    };
    assert_eq!(w.bindings[0].key.to_string(), "router.logits");
}
