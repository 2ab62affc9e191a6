//! Drawing a flow's shape: DOT and Mermaid that read back as written, whatever the atoms are
//! called. Each drawing is parsed back by the rules of its format (and, for DOT, by Graphviz's
//! `dot` where it is installed) and must give back every name, node and edge.

use std::collections::BTreeMap;

use baton_core::compile::{Shape, ShapeAtom};
use baton_core::model::AtomKind;

/// Names a user may give atoms (every one is legal), each a trap for one format or the other.
const HOSTILE: &[&str] = &[
    "plain",
    "quote\"d",
    "new\nline",
    "back\\slash\\",
    "\\N and \\G",
    "[bracket]",
    "{brace}",
    "pipe|bar",
    "a-->b",
    "semi;colon",
    "close}",
    "x\"]; evil[\"y",
    "unicodé ✓ 日本 e\u{301}",
    "#quot; #35;",
    "<b>html</b> &lt;",
    "`tick`",
    "tab\there\u{1b}",
    "%% comment",
    "end",
    "a0",
    "$$x^2$$",
    "style:fill#f00;",
    "(round)",
    "((circle))",
    ">asym]",
];

fn hostile_shape() -> Shape {
    let atoms = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, name)| ShapeAtom {
            name: (*name).to_owned(),
            kind: if i % 5 == 4 {
                AtomKind::Retry
            } else {
                AtomKind::Task
            },
        })
        .collect();
    let edges = (1..HOSTILE.len()).map(|i| (i - 1, i)).collect();
    Shape { atoms, edges }
}

/// What a label shows for `name`: the name, control characters other than line breaks shown
/// as Rust escapes them.
fn shown(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---- DOT ----

#[derive(Debug, PartialEq)]
enum Token {
    Id(String),
    Quoted(String),
    Punct(&'static str),
}

/// Splits DOT text into tokens as Graphviz's lexer does: in a quoted string, a backslash and
/// the character after it stay together (`\"` is a quote; a backslash before a line break
/// joins the lines).
fn dot_tokens(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next().expect("a quoted string is closed") {
                        '"' => break,
                        '\\' => match chars.next().expect("an escape is complete") {
                            '"' => s.push('"'),
                            '\n' => {}
                            other => {
                                s.push('\\');
                                s.push(other);
                            }
                        },
                        other => s.push(other),
                    }
                }
                tokens.push(Token::Quoted(s));
            }
            '-' if chars.peek() == Some(&'>') => {
                chars.next();
                tokens.push(Token::Punct("->"));
            }
            '{' => tokens.push(Token::Punct("{")),
            '}' => tokens.push(Token::Punct("}")),
            '[' => tokens.push(Token::Punct("[")),
            ']' => tokens.push(Token::Punct("]")),
            ';' => tokens.push(Token::Punct(";")),
            ',' => tokens.push(Token::Punct(",")),
            '=' => tokens.push(Token::Punct("=")),
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut s = c.to_string();
                while let Some(&n) = chars.peek() {
                    if !(n.is_ascii_alphanumeric() || n == '_') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push(Token::Id(s));
            }
            other => panic!("unexpected {other:?} in DOT text"),
        }
    }
    tokens
}

/// What Graphviz shows for a label (escString): `\n`, `\l`, `\r` break lines, `\\` is a
/// backslash; `\N`, `\G` and the like would be replaced by names, which no label of ours may
/// ask for. It decodes HTML entities too, of which ours may hold only `&amp;`.
fn dot_label_text(label: &str) -> String {
    assert!(
        label
            .match_indices('&')
            .all(|(i, _)| label[i..].starts_with("&amp;")),
        "label {label:?} holds an entity other than &amp;"
    );
    let label = label.replace("&amp;", "&");
    let mut out = String::new();
    let mut chars = label.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'l' | 'r') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(c @ ('N' | 'G' | 'E' | 'T' | 'H' | 'L')) => {
                panic!("label {label:?} asks Graphviz to substitute \\{c}")
            }
            Some(other) => out.push(other),
            None => panic!("label {label:?} ends in a lone backslash"),
        }
    }
    out
}

/// Parses our DOT: `digraph "<name>" { <id> [label="..", shape=..]; ... <id> -> <id>; ... }`.
/// Returns the graph's name, each node's label text by id, and the edges.
fn parse_dot(text: &str) -> (String, BTreeMap<String, String>, Vec<(String, String)>) {
    let tokens = dot_tokens(text);
    let mut t = tokens.iter();
    assert_eq!(t.next(), Some(&Token::Id("digraph".into())));
    let Some(Token::Quoted(name)) = t.next() else {
        panic!("the graph has a quoted name: {text}")
    };
    assert_eq!(t.next(), Some(&Token::Punct("{")));
    let (mut nodes, mut edges) = (BTreeMap::new(), Vec::new());
    loop {
        let id = match t.next() {
            Some(Token::Punct("}")) => break,
            Some(Token::Id(id)) => id.clone(),
            other => panic!("expected a statement, got {other:?}: {text}"),
        };
        assert!(
            id.starts_with('a') && id[1..].parse::<usize>().is_ok(),
            "node ids are a0, a1, ...: {id}"
        );
        match t.next() {
            Some(Token::Punct("->")) => {
                let Some(Token::Id(to)) = t.next() else {
                    panic!("an edge ends at an id: {text}")
                };
                edges.push((id, to.clone()));
            }
            Some(Token::Punct("[")) => {
                let mut label = None;
                loop {
                    let key = match t.next() {
                        Some(Token::Punct("]")) => break,
                        Some(Token::Punct(",")) => continue,
                        Some(Token::Id(key)) => key.clone(),
                        other => panic!("expected an attribute, got {other:?}: {text}"),
                    };
                    assert_eq!(t.next(), Some(&Token::Punct("=")));
                    let value = match t.next() {
                        Some(Token::Id(v) | Token::Quoted(v)) => v.clone(),
                        other => panic!("expected a value, got {other:?}: {text}"),
                    };
                    if key == "label" {
                        label = Some(dot_label_text(&value));
                    }
                }
                nodes.insert(id, label.expect("every node has a label"));
            }
            other => panic!("expected `->` or `[`, got {other:?}: {text}"),
        }
        assert_eq!(t.next(), Some(&Token::Punct(";")));
    }
    assert_eq!(t.next(), None, "nothing after the graph");
    (name.clone(), nodes, edges)
}

#[test]
fn dot_reads_back_every_name_node_and_edge() {
    let shape = hostile_shape();
    let flow_name = "stack \"x\" {y} \\";
    let dot = shape.to_dot(flow_name);
    let (name, nodes, edges) = parse_dot(&dot);
    // A graph's name is no label: Graphviz's lexer keeps its backslash pairs as they are.
    assert_eq!(name, flow_name.replace('\\', "\\\\"));
    assert_eq!(nodes.len(), HOSTILE.len());
    for (i, atom) in HOSTILE.iter().enumerate() {
        assert_eq!(nodes[&format!("a{i}")], shown(atom), "{dot}");
    }
    let expected: Vec<(String, String)> = (1..HOSTILE.len())
        .map(|i| (format!("a{}", i - 1), format!("a{i}")))
        .collect();
    assert_eq!(edges, expected);
    graphviz_reads_it(&dot);
}

/// Where Graphviz's `dot` is installed, it must lay the graph out and draw every label as
/// written (its JSON output has the text of each label line). Elsewhere the check above is
/// what there is.
#[allow(clippy::print_stderr)] // says which check ran
fn graphviz_reads_it(dot: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("dot")
        .arg("-Tjson")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("graphviz is not installed: DOT checked by the structural parser only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dot refused the graph: {stderr}\n{dot}"
    );
    assert!(stderr.trim().is_empty(), "dot warned: {stderr}\n{dot}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = json["objects"].as_array().unwrap();
    assert_eq!(objects.len(), HOSTILE.len());
    for object in objects {
        let id = object["name"].as_str().unwrap();
        let i: usize = id[1..].parse().unwrap();
        let lines: Vec<&str> = object["_ldraw_"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|op| op["op"] == "T")
            .map(|op| op["text"].as_str().unwrap())
            .collect();
        assert_eq!(lines.join("\n"), shown(HOSTILE[i]), "node {id}");
    }
    assert_eq!(
        json["edges"].as_array().unwrap().len(),
        HOSTILE.len() - 1,
        "every edge is drawn"
    );
}

// ---- Mermaid ----

/// A label's text as Mermaid shows it, or why it is not safe: only plain characters, entity
/// codes (`#34;`) and `<br>` may appear in it.
fn mermaid_label_text(label: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = label;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("<br>") {
            out.push('\n');
            rest = after;
        } else if c == '#' {
            let end = rest
                .find(';')
                .ok_or(format!("`#` without `;` in {label:?}"))?;
            let code: u32 = rest[1..end]
                .parse()
                .map_err(|_| format!("`{}` is not a numeric entity", &rest[..=end]))?;
            out.push(char::from_u32(code).ok_or(format!("no character {code}"))?);
            rest = &rest[end + 1..];
        } else if c.is_ascii_alphanumeric()
            || " _-.,/'+=@!?*".contains(c)
            || !(c.is_ascii() || c.is_control())
        {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        } else {
            return Err(format!("{c:?} is special to Mermaid, in {label:?}"));
        }
    }
    Ok(out)
}

/// A node line, `  a<i>["<label>"]` (a task) or `  a<i>{"<label>"}` (a retry controller):
/// the index, the kind and the label, whose text holds no double quote.
fn mermaid_node(line: &str) -> Option<(usize, AtomKind, &str)> {
    let rest = line.strip_prefix("  a")?;
    let (index, rest) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit())?);
    let (kind, inner) = if let Some(inner) = rest.strip_prefix("[\"") {
        (AtomKind::Task, inner.strip_suffix("\"]")?)
    } else {
        (
            AtomKind::Retry,
            rest.strip_prefix("{\"")?.strip_suffix("\"}")?,
        )
    };
    if inner.contains('"') {
        return None;
    }
    Some((index.parse().ok()?, kind, inner))
}

/// An edge line, `  a<from> --> a<to>`.
fn mermaid_edge(line: &str) -> Option<(usize, usize)> {
    let (from, to) = line.strip_prefix("  a")?.split_once(" --> a")?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !(digits(from) && digits(to)) {
        return None;
    }
    Some((from.parse().ok()?, to.parse().ok()?))
}

#[test]
fn mermaid_reads_back_every_name_node_and_edge() {
    let shape = hostile_shape();
    let mermaid = shape.to_mermaid();
    let mut lines = mermaid.lines();
    assert_eq!(lines.next(), Some("flowchart TD"));
    let (mut nodes, mut edges) = (BTreeMap::new(), Vec::new());
    for line in lines {
        if let Some(edge) = mermaid_edge(line) {
            edges.push(edge);
        } else if let Some((i, kind, label)) = mermaid_node(line) {
            assert_eq!(kind, shape.atoms[i].kind, "{line}");
            let text = mermaid_label_text(label).unwrap_or_else(|e| panic!("{e}\n{mermaid}"));
            nodes.insert(i, text);
        } else {
            panic!("not a node or an edge: {line:?}\n{mermaid}");
        }
    }
    assert_eq!(nodes.len(), HOSTILE.len());
    for (i, atom) in HOSTILE.iter().enumerate() {
        assert_eq!(nodes[&i], *atom);
    }
    let expected: Vec<(usize, usize)> = (1..HOSTILE.len()).map(|i| (i - 1, i)).collect();
    assert_eq!(edges, expected);
}
