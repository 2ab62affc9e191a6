//! Drawing a [`Shape`]: Graphviz DOT and Mermaid text that either tool reads back as written,
//! whatever the atoms are called.
//!
//! Atom names are any text a user chose (quotes, newlines, brackets, `-->`, `}`), so neither
//! format gets a name as an identifier. Each atom is a node with an id of the drawing's own,
//! `a` and its index (`a0`, `a1`, ...), and its name goes in a quoted label, escaped by that
//! format's rules:
//!
//! - **DOT** ([escString](https://graphviz.org/docs/attr-types/escString/)): a backslash and a
//!   double quote are escaped with a backslash, a line break is `\n`, and any other control
//!   character is written as Rust writes it escaped (`\u{1b}`, `\t`), backslash doubled, so the
//!   label shows it rather than acting on it. Graphviz also decodes HTML entities in labels
//!   (`&lt;`), so `&` is written `&amp;`. The graph's own name is a quoted string escaped the
//!   same way.
//! - **Mermaid**: labels are quoted strings in which Mermaid decodes entity codes (`#35;`) and
//!   then renders HTML, so every character other than letters, digits, spaces and `_-.,/'+=@!?*`
//!   is written as its decimal entity code (`"` as `#34;`, `#` as `#35;`, `<` as `#60;`,
//!   brackets, `|`, `;`, `:`, backticks and `$` likewise), and a line break as `<br>`.

use std::fmt::Write;

use crate::compile::Shape;
use crate::model::AtomKind;

/// `shape` in Graphviz DOT, as a digraph named `name`.
pub(crate) fn dot(shape: &Shape, name: &str) -> String {
    let mut out = format!("digraph \"{}\" {{\n", dot_escape(name));
    for (i, a) in shape.atoms.iter().enumerate() {
        let form = match a.kind {
            AtomKind::Task => "box",
            AtomKind::Retry => "diamond",
        };
        let _ = writeln!(
            out,
            "  a{i} [label=\"{}\", shape={form}];",
            dot_escape(&a.name)
        );
    }
    for &(from, to) in &shape.edges {
        if from < shape.atoms.len() && to < shape.atoms.len() {
            let _ = writeln!(out, "  a{from} -> a{to};");
        }
    }
    out.push_str("}\n");
    out
}

/// `shape` as a Mermaid flowchart.
pub(crate) fn mermaid(shape: &Shape) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, a) in shape.atoms.iter().enumerate() {
        let label = mermaid_escape(&a.name);
        let _ = match a.kind {
            AtomKind::Task => writeln!(out, "  a{i}[\"{label}\"]"),
            AtomKind::Retry => writeln!(out, "  a{i}{{\"{label}\"}}"),
        };
    }
    for &(from, to) in &shape.edges {
        if from < shape.atoms.len() && to < shape.atoms.len() {
            let _ = writeln!(out, "  a{from} --> a{to}");
        }
    }
    out
}

/// `text` for the inside of a DOT quoted string used as a label.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() => {
                // `escape_debug` starts with one backslash; the label needs two to show one.
                out.push('\\');
                out.extend(c.escape_debug());
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` for the inside of a Mermaid quoted label.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let plain = c.is_ascii_alphanumeric()
            || " _-.,/'+=@!?*".contains(c)
            || !(c.is_ascii() || c.is_control() || c == '\u{2028}' || c == '\u{2029}');
        if plain {
            out.push(c);
        } else if c == '\n' {
            out.push_str("<br>");
        } else {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_labels_escape_what_the_lexer_and_escstring_read() {
        assert_eq!(dot_escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(dot_escape("one\ntwo"), r"one\ntwo");
        assert_eq!(dot_escape("tab\there\u{1b}"), r"tab\\there\\u{1b}");
        assert_eq!(dot_escape("é ü -> }; {"), "é ü -> }; {");
        assert_eq!(dot_escape("&lt;"), "&amp;lt;");
    }

    #[test]
    fn mermaid_labels_are_entity_codes_but_for_plain_text() {
        assert_eq!(mermaid_escape("server-1 é"), "server-1 é");
        assert_eq!(mermaid_escape(r#"a"b"#), "a#34;b");
        assert_eq!(mermaid_escape("#quot;"), "#35;quot#59;");
        assert_eq!(
            mermaid_escape("a-->b[c]|`d`"),
            "a--#62;b#91;c#93;#124;#96;d#96;"
        );
        assert_eq!(mermaid_escape("x\ny"), "x<br>y");
    }
}
