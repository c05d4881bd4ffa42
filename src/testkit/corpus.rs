//! Test-only: hostile inputs for the loaders, by format, each as large as
//! the size asked for (issue 17). Well-formed but wrong documents (deep
//! nesting, huge arrays, alias storms, very long keys and strings) and
//! plain junk (NUL, invalid UTF-8), so a loader's guard, its parser and
//! what it does with the parsed value are all reached.

/// One named input.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn case(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name: name.into(),
        bytes: bytes.into(),
    }
}

/// `head`, then `open` repeated, `mid`, `close` repeated as often, then
/// `tail`: as deep as fits in `size` bytes.
pub fn nest(head: &str, open: &str, mid: &str, close: &str, tail: &str, size: usize) -> Vec<u8> {
    let fixed = head.len() + mid.len() + tail.len();
    let n = size.saturating_sub(fixed) / (open.len() + close.len()).max(1);
    [head, &open.repeat(n), mid, &close.repeat(n), tail]
        .concat()
        .into_bytes()
}

/// `head`, then `unit(i)` for i = 0, 1, ... while it fits in `size` with
/// `tail`. A unit that does not change with `i` (the same for 0, 1 and 2)
/// is repeated in one go: the unit-test build is slow at the other way.
pub fn repeat(head: &str, unit: impl Fn(usize) -> String, tail: &str, size: usize) -> Vec<u8> {
    let first = unit(0);
    let room = size.saturating_sub(head.len() + tail.len());
    if !first.is_empty() && first == unit(1) && first == unit(2) {
        return [head, &first.repeat(room / first.len()), tail]
            .concat()
            .into_bytes();
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(head.as_bytes());
    for i in 0.. {
        let u = unit(i);
        if out.len() + u.len() + tail.len() > size {
            break;
        }
        out.extend_from_slice(u.as_bytes());
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Inputs every text loader must refuse or survive, whatever the format.
pub fn junk(size: usize) -> Vec<Case> {
    let mut nul = b"a = 1\n".to_vec();
    nul.resize(size, 0);
    let mut bad_utf8 = b"a = \"".to_vec();
    bad_utf8.resize(size, 0xff);
    let mut late_bad = vec![b' '; size.saturating_sub(1)];
    late_bad.push(0xc3);
    vec![
        case("nul bytes", nul),
        case("invalid utf-8", bad_utf8),
        case("invalid utf-8 at the very end", late_bad),
        case("one long line of x", vec![b'x'; size]),
        case("only newlines", vec![b'\n'; size]),
        case("only spaces", vec![b' '; size]),
        case("utf-8 boms", "\u{feff}".repeat(size / 3).into_bytes()),
        case(
            "four-byte characters",
            "\u{1f600}".repeat(size / 4).into_bytes(),
        ),
    ]
}

/// `head` put before every case, the whole at most `size` bytes.
fn headed(head: &str, size: usize, make: impl FnOnce(usize) -> Vec<Case>) -> Vec<Case> {
    let mut out = make(size.saturating_sub(head.len()));
    for c in &mut out {
        c.bytes.splice(0..0, head.bytes());
    }
    out
}

/// TOML that parses, or nearly, and is wrong, each case starting with
/// `head`. `key` names a field the loader knows that takes an array of
/// strings (so typed parsing goes deep), `any` one that takes any value
/// (or `key` again).
pub fn toml(size: usize, head: &str, key: &str, any: &str) -> Vec<Case> {
    headed(head, size, |size| toml_body(size, key, any))
}

fn toml_body(size: usize, key: &str, any: &str) -> Vec<Case> {
    let k = |s: &str| s.replace("KEY", key).replace("ANY", any);
    let mut out = vec![
        case(
            "toml: unclosed arrays",
            nest(&k("KEY = "), "[", "", "", "", size),
        ),
        case(
            "toml: nested arrays",
            nest(&k("KEY = "), "[", "", "]", "\n", size),
        ),
        case(
            "toml: nested arrays, unknown key",
            nest("zz = ", "[", "1", "]", "\n", size),
        ),
        case(
            "toml: nested arrays, any value",
            nest(&k("ANY = "), "[", "1", "]", "\n", size),
        ),
        case(
            "toml: nested inline tables",
            nest(&k("ANY = "), "{a=", "1", "}", "\n", size),
        ),
        case(
            "toml: nested inline tables, unknown key",
            nest("zz = ", "{a=", "1", "}", "\n", size),
        ),
        case(
            "toml: arrays of inline tables",
            nest(&k("ANY = "), "[{a=", "1", "}]", "\n", size),
        ),
        case(
            "toml: unclosed inline tables",
            nest(&k("ANY = "), "{a=", "", "", "", size),
        ),
        case(
            "toml: dotted key",
            nest(&k("ANY"), ".a", " = 1", "", "\n", size),
        ),
        case(
            "toml: dotted unknown key",
            nest("zz", ".a", " = 1", "", "\n", size),
        ),
        case(
            "toml: table header",
            nest(&k("[ANY"), ".a", "]", "", "\nb = 1\n", size),
        ),
        case(
            "toml: array-of-tables header",
            nest(&k("[[ANY"), ".a", "]]", "", "\n", size),
        ),
        case(
            "toml: many nested headers",
            repeat(
                "",
                |i| format!("[{}]\n", vec!["a"; i % 64 + 1].join(".")),
                "",
                size,
            ),
        ),
        case(
            "toml: huge string array",
            repeat(&k("KEY = ["), |_| "\"x\",".into(), "]\n", size),
        ),
        case(
            "toml: huge integer array",
            repeat(&k("ANY = ["), |_| "0,".into(), "]\n", size),
        ),
        case(
            "toml: huge array of empty arrays",
            repeat(&k("ANY = ["), |_| "[],".into(), "]\n", size),
        ),
        case(
            "toml: huge array of empty tables",
            repeat(&k("ANY = ["), |_| "{},".into(), "]\n", size),
        ),
        case(
            "toml: many array-of-tables",
            repeat("", |_| k("[[ANY]]\n"), "", size),
        ),
        case(
            "toml: many keys",
            repeat("", |i| format!("k{i} = 1\n"), "", size),
        ),
        case(
            "toml: many keys in one inline table",
            repeat(&k("ANY = {"), |i| format!("k{i}=1,"), "z=1}\n", size),
        ),
        case(
            "toml: many tables",
            repeat("", |i| format!("[t{i}]\n"), "", size),
        ),
        case(
            "toml: many dotted keys",
            repeat("", |i| format!("a.k{i} = 1\n"), "", size),
        ),
        case(
            "toml: one key many times",
            repeat("", |_| k("KEY = [\"x\"]\n"), "", size),
        ),
        case(
            "toml: very long bare key",
            nest("", "k", " = 1", "", "\n", size),
        ),
        case(
            "toml: very long quoted key",
            nest("\"", "k", "\" = 1", "", "\n", size),
        ),
        case(
            "toml: very long string",
            nest(&k("KEY = [\""), "x", "\"]", "", "\n", size),
        ),
        case(
            "toml: very long multi-line string",
            nest(&k("KEY = [\"\"\""), "x\n", "\"\"\"]", "", "\n", size),
        ),
        case(
            "toml: escape storm",
            nest(&k("KEY = [\""), "\\u00e9", "\"]", "", "\n", size),
        ),
        case(
            "toml: unclosed string",
            nest(&k("KEY = [\""), "x", "", "", "", size),
        ),
        case(
            "toml: long number",
            nest(&k("ANY = "), "9", "", "", "\n", size),
        ),
        case(
            "toml: long float",
            nest(&k("ANY = 1."), "9", "e9", "", "\n", size),
        ),
        case(
            "toml: comments",
            repeat("", |_| "# comment\n".into(), "", size),
        ),
    ];
    out.extend(junk(size));
    out
}

/// YAML that parses, or nearly, and is wrong, each case starting with
/// `head`. `key` takes a list of strings, `any` any value (or `key` again).
pub fn yaml(size: usize, head: &str, key: &str, any: &str) -> Vec<Case> {
    headed(head, size, |size| yaml_body(size, key, any))
}

fn yaml_body(size: usize, key: &str, any: &str) -> Vec<Case> {
    let k = |s: &str| s.replace("KEY", key).replace("ANY", any);
    // Nine levels of nine aliases each: 9^9 strings if expanded.
    let lol9 = format!("[{}]", ["\"lol\""; 9].join(","));
    let alias = |i: usize| vec![format!("*a{i}"); 8].join(",");
    let mut laughs = format!("a0: &a0 {lol9}\n");
    let mut nested = format!("&a0 {lol9}");
    for i in 1..10 {
        laughs += &format!("a{i}: &a{i} [{}, *a{}]\n", alias(i - 1), i - 1);
        nested = format!("&a{i} [{nested}, {}]", alias(i - 1));
    }
    let laughs_in_field = k(&format!("ANY: {nested}\n"));
    let big_anchor = repeat(&k("ANY: &big ["), |_| "\"lol\",".into(), "]\n", size / 2);
    let mut aliases = big_anchor.clone();
    aliases.extend(repeat(
        &k("KEY: ["),
        |_| "*big,".into(),
        "]\n",
        size - big_anchor.len(),
    ));
    let mut out = vec![
        case(
            "yaml: unclosed flow sequences",
            nest(&k("KEY: "), "[", "", "", "", size),
        ),
        case(
            "yaml: nested flow sequences",
            nest(&k("KEY: "), "[", "", "]", "\n", size),
        ),
        case(
            "yaml: nested flow sequences, any value",
            nest(&k("ANY: "), "[", "1", "]", "\n", size),
        ),
        case(
            "yaml: nested flow sequences, top level",
            nest("", "[", "", "]", "\n", size),
        ),
        case(
            "yaml: nested flow mappings",
            nest(&k("ANY: "), "{a: ", "1", "}", "\n", size),
        ),
        case(
            "yaml: nested flow mappings, top level",
            nest("", "{a: ", "1", "}", "\n", size),
        ),
        case(
            "yaml: nested block sequences on one line",
            nest(&k("ANY:\n  "), "- ", "1", "", "\n", size),
        ),
        case(
            "yaml: nested block mappings",
            repeat("", |i| format!("{}a:\n", " ".repeat(i)), "", size),
        ),
        case(
            "yaml: nested explicit keys",
            nest("", "? ", "a", "", "\n", size),
        ),
        case("yaml: billion laughs", laughs),
        case("yaml: billion laughs in a field", laughs_in_field),
        case("yaml: one big anchor, many aliases", aliases),
        case(
            "yaml: many anchors",
            repeat(&k("KEY: ["), |i| format!("&a{i} x,"), "]\n", size),
        ),
        case(
            "yaml: many aliases of one scalar",
            repeat(&k("ANY: &a x\nKEY: ["), |_| "*a,".into(), "]\n", size),
        ),
        case("yaml: undefined alias", format!("{}\n", k("KEY: *nowhere"))),
        case(
            "yaml: merge key storm",
            repeat(
                "b: &b {x: 1}\n",
                |i| format!("m{i}: {{<<: [*b, *b, *b, *b]}}\n"),
                "",
                size,
            ),
        ),
        case(
            "yaml: huge flow sequence",
            repeat(&k("KEY: ["), |_| "x,".into(), "]\n", size),
        ),
        case(
            "yaml: huge block sequence",
            repeat(&k("KEY:\n"), |_| "- x\n".into(), "", size),
        ),
        case(
            "yaml: huge sequence of empty sequences",
            repeat(&k("ANY: ["), |_| "[],".into(), "]\n", size),
        ),
        case(
            "yaml: many keys",
            repeat("", |i| format!("k{i}: 1\n"), "", size),
        ),
        case(
            "yaml: many keys in one flow mapping",
            repeat(&k("ANY: {"), |i| format!("k{i}: 1,"), "z: 1}\n", size),
        ),
        case(
            "yaml: one key many times",
            repeat("", |_| k("KEY: [x]\n"), "", size),
        ),
        case(
            "yaml: many documents",
            repeat("", |_| "---\n".into(), "", size),
        ),
        case(
            "yaml: many documents with content",
            repeat("", |_| k("---\nKEY: [x]\n"), "", size),
        ),
        case("yaml: very long key", nest("", "k", ": 1", "", "\n", size)),
        case(
            "yaml: very long quoted key",
            nest("\"", "k", "\": 1", "", "\n", size),
        ),
        case(
            "yaml: very long plain scalar",
            nest(&k("KEY: ["), "x", "]", "", "\n", size),
        ),
        case(
            "yaml: very long folded scalar",
            nest(&k("ANY: >\n"), "  x\n", "", "", "", size),
        ),
        case(
            "yaml: escape storm",
            nest(&k("KEY: [\""), "\\u00e9", "\"]", "", "\n", size),
        ),
        case(
            "yaml: unclosed quote",
            nest(&k("KEY: [\""), "x", "", "", "", size),
        ),
        case(
            "yaml: tag storm",
            repeat(&k("KEY: ["), |_| "!!str x,".into(), "]\n", size),
        ),
        case(
            "yaml: custom tags",
            repeat(&k("KEY: ["), |i| format!("!t{i} x,"), "]\n", size),
        ),
        case(
            "yaml: directives",
            repeat(
                "",
                |i| format!("%TAG !t{i}! tag:x,2000:\n"),
                "---\na: 1\n",
                size,
            ),
        ),
        case(
            "yaml: long indentation",
            nest("a:\n", " ", "b: 1", "", "\n", size),
        ),
        case(
            "yaml: comments",
            repeat("", |_| "# comment\n".into(), "", size),
        ),
        case(
            "yaml: tabs",
            nest(&k("KEY:\n"), "\t", "- x", "", "\n", size),
        ),
    ];
    out.extend(junk(size));
    out
}

/// JSON that parses, or nearly, and is wrong. `entry` is one well-formed
/// element the reader expects in a top-level array (repeated to fill).
pub fn json(size: usize, entry: &str) -> Vec<Case> {
    let mut out = vec![
        case("json: unclosed arrays", nest("", "[", "", "", "", size)),
        case("json: nested arrays", nest("", "[", "", "]", "", size)),
        case(
            "json: nested objects",
            nest("", "{\"a\":", "1", "}", "", size),
        ),
        case(
            "json: nested arrays in the first entry",
            nest("[{\"Id\":", "[", "1", "]", "}]", size),
        ),
        case(
            "json: huge array of the expected entry",
            repeat(
                "[",
                |i| format!("{}{entry}", if i > 0 { "," } else { "" }),
                "]",
                size,
            ),
        ),
        case(
            "json: huge array of zeros",
            repeat("[0", |_| ",0".into(), "]", size),
        ),
        case(
            "json: huge array of empty arrays",
            repeat("[[]", |_| ",[]".into(), "]", size),
        ),
        case(
            "json: huge array of empty objects",
            repeat("[{}", |_| ",{}".into(), "]", size),
        ),
        case(
            "json: many keys",
            repeat("{\"a\":0", |i| format!(",\"k{i}\":0"), "}", size),
        ),
        case(
            "json: one key many times",
            repeat("{\"Id\":\"x\"", |_| ",\"Id\":\"x\"".into(), "}", size),
        ),
        case(
            "json: very long string",
            nest("[\"", "x", "\"]", "", "", size),
        ),
        case(
            "json: very long key",
            nest("{\"", "k", "\":1}", "", "", size),
        ),
        case(
            "json: escape storm",
            nest("[\"", "\\u00e9", "\"]", "", "", size),
        ),
        case(
            "json: lone surrogates",
            nest("[\"", "\\ud800", "\"]", "", "", size),
        ),
        case("json: long number", nest("[", "9", "]", "", "", size)),
        case("json: huge exponent", nest("[1e", "9", "]", "", "", size)),
        case("json: unclosed string", nest("[\"", "x", "", "", "", size)),
        case(
            "json: many lines of objects",
            repeat("", |_| format!("{entry}\n"), "", size),
        ),
    ];
    out.extend(junk(size));
    out
}
