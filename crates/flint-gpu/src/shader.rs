//! The shader registry and its tiny preprocessor.
//!
//! Kernel sources live in `shaders/*.wgsl`; a registry maps file names to source text. Before
//! compilation a source is preprocessed: `#include "file"` (each file at most once),
//! `#define NAME [value]`, `#undef NAME`, `#if EXPR`, `#ifdef`, `#ifndef`, `#elif`, `#else`,
//! `#endif`, and `#for NAME in A..B` ... `#endfor`, which repeats its lines with NAME defined as
//! each integer from A to B - 1 (unrolling at the source, for drivers that unroll too little).
//! Expressions have integers, names (an undefined name is 0, a define without value is 1),
//! `defined(NAME)`, `+ - * / %`, `! && || == != < <= > >=` and parentheses. Defines with a value
//! are substituted as whole words in code lines, so `#define TILE 16` makes `TILE` a literal.
//! Dtype and optional features (f16, subgroups) are chosen this way; numeric knobs that do not
//! change types are better passed as WGSL override constants.

use std::collections::{BTreeMap, HashSet};

use crate::{GpuError, Result};

/// A set of named WGSL sources that can include each other.
#[derive(Clone, Debug, Default)]
pub struct ShaderRegistry {
    files: BTreeMap<&'static str, &'static str>,
}

impl ShaderRegistry {
    /// A registry over `(file name, source)` pairs, usually made with `include_str!`.
    pub fn new(files: &[(&'static str, &'static str)]) -> Self {
        Self { files: files.iter().copied().collect() }
    }

    /// The source of `name`, if registered.
    pub fn get(&self, name: &str) -> Option<&'static str> {
        self.files.get(name).copied()
    }

    /// All registered file names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.files.keys().copied()
    }

    /// Preprocess `name` with the given defines (`(NAME, value)`; an empty value means "defined").
    pub fn preprocess(&self, name: &str, defines: &[(String, String)]) -> Result<String> {
        let mut pp = Preprocessor {
            registry: self,
            defines: defines.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            included: HashSet::new(),
            out: String::new(),
        };
        pp.file(name)?;
        Ok(pp.out)
    }
}

struct Preprocessor<'a> {
    registry: &'a ShaderRegistry,
    defines: BTreeMap<String, String>,
    included: HashSet<String>,
    out: String,
}

/// One level of `#if` nesting.
struct Cond {
    /// Whether lines in the current branch are emitted.
    active: bool,
    /// Whether some branch of this `#if` chain has been taken already.
    taken: bool,
    /// Whether the enclosing level is active.
    parent: bool,
    seen_else: bool,
}

impl Preprocessor<'_> {
    fn file(&mut self, name: &str) -> Result<()> {
        if !self.included.insert(name.to_string()) {
            return Ok(());
        }
        let src = self.registry.get(name).ok_or_else(|| GpuError::Shader {
            shader: name.to_string(),
            message: "not in the shader registry".into(),
        })?;
        let lines: Vec<&str> = src.lines().collect();
        self.lines(name, &lines, 0)
    }

    /// Process `lines`, the first of which is line `first + 1` of `name`.
    fn lines(&mut self, name: &str, lines: &[&str], first: usize) -> Result<()> {
        let mut stack: Vec<Cond> = Vec::new();
        let mut idx = 0;
        while idx < lines.len() {
            let line = lines[idx];
            let lineno = first + idx;
            idx += 1;
            let err = |message: String| GpuError::Shader { shader: format!("{name}:{}", lineno + 1), message };
            let active = stack.last().is_none_or(|c| c.active);
            let trimmed = line.trim_start();
            let Some(directive) = trimmed.strip_prefix('#') else {
                if active {
                    self.emit(line);
                }
                continue;
            };
            let (word, rest) = match directive.find(char::is_whitespace) {
                Some(i) => (&directive[..i], directive[i..].trim()),
                None => (directive.trim(), ""),
            };
            // Strip a trailing `//` comment from the directive's argument.
            let rest = rest.split("//").next().unwrap_or("").trim();
            match word {
                "if" | "ifdef" | "ifndef" => {
                    let value = if !active {
                        false
                    } else if word == "if" {
                        self.eval(rest).map_err(err)? != 0
                    } else {
                        let defined = self.defines.contains_key(rest);
                        if word == "ifdef" { defined } else { !defined }
                    };
                    stack.push(Cond { active: active && value, taken: value, parent: active, seen_else: false });
                }
                "elif" => {
                    let Some(top) = stack.last() else {
                        return Err(err("#elif without #if".into()));
                    };
                    if top.seen_else {
                        return Err(err("#elif after #else".into()));
                    }
                    let (parent, taken) = (top.parent, top.taken);
                    let value = parent && !taken && self.eval(rest).map_err(err)? != 0;
                    let top = stack.last_mut().expect("checked above");
                    top.active = value;
                    top.taken |= value;
                }
                "else" => {
                    let Some(top) = stack.last_mut() else {
                        return Err(err("#else without #if".into()));
                    };
                    if top.seen_else {
                        return Err(err("second #else".into()));
                    }
                    top.seen_else = true;
                    top.active = top.parent && !top.taken;
                    top.taken = true;
                }
                "endif" => {
                    if stack.pop().is_none() {
                        return Err(err("#endif without #if".into()));
                    }
                }
                "for" => {
                    // Find the matching #endfor; the body is processed once per value.
                    let mut depth = 1;
                    let start = idx;
                    while idx < lines.len() {
                        let w = lines[idx].trim_start().strip_prefix('#').and_then(|d| d.split_whitespace().next());
                        match w {
                            Some("for") => depth += 1,
                            Some("endfor") => depth -= 1,
                            _ => {}
                        }
                        if depth == 0 {
                            break;
                        }
                        idx += 1;
                    }
                    if depth != 0 {
                        return Err(err("#for without #endfor".into()));
                    }
                    let body = &lines[start..idx];
                    idx += 1;
                    if !active {
                        continue;
                    }
                    let (var, range) = rest
                        .split_once(" in ")
                        .map(|(v, r)| (v.trim(), r.trim()))
                        .filter(|(v, _)| is_ident(v))
                        .ok_or_else(|| err(format!("#for needs `NAME in A..B`, got {rest:?}")))?;
                    let (lo, hi) =
                        range.split_once("..").ok_or_else(|| err(format!("#for range {range:?} is not A..B")))?;
                    let (lo, hi) = (self.eval(lo).map_err(err)?, self.eval(hi).map_err(err)?);
                    if hi - lo > 4096 {
                        return Err(err(format!("#for over {} values", hi - lo)));
                    }
                    let saved = self.defines.get(var).cloned();
                    for v in lo..hi {
                        self.defines.insert(var.to_string(), v.to_string());
                        self.lines(name, body, first + start)?;
                    }
                    match saved {
                        Some(old) => self.defines.insert(var.to_string(), old),
                        None => self.defines.remove(var),
                    };
                }
                "endfor" => return Err(err("#endfor without #for".into())),
                _ if !active => {}
                "include" => {
                    let file = rest.trim_matches('"');
                    if file.is_empty() || !rest.starts_with('"') || !rest.ends_with('"') {
                        return Err(err(format!("#include needs a quoted file name, got {rest:?}")));
                    }
                    self.file(file)?;
                }
                "define" => {
                    let mut parts = rest.splitn(2, char::is_whitespace);
                    let key = parts.next().unwrap_or("");
                    if !is_ident(key) {
                        return Err(err(format!("#define needs a name, got {key:?}")));
                    }
                    let value = parts.next().unwrap_or("").trim().to_string();
                    self.defines.insert(key.to_string(), value);
                }
                "undef" => {
                    self.defines.remove(rest);
                }
                other => return Err(err(format!("unknown directive #{other}"))),
            }
        }
        if !stack.is_empty() {
            return Err(GpuError::Shader {
                shader: name.to_string(),
                message: format!("{} unterminated #if", stack.len()),
            });
        }
        Ok(())
    }

    /// Emit a code line, substituting defines that have a value.
    fn emit(&mut self, line: &str) {
        if self.defines.values().all(String::is_empty) {
            self.out.push_str(line);
            self.out.push('\n');
            return;
        }
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &line[start..i];
                match self.defines.get(word) {
                    Some(v) if !v.is_empty() => self.out.push_str(v),
                    _ => self.out.push_str(word),
                }
            } else if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
                self.out.push_str(&line[i..]);
                break;
            } else {
                let start = i;
                while i < bytes.len() && !(bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' || bytes[i] == b'/') {
                    i += 1;
                }
                if i == start {
                    i += 1;
                }
                self.out.push_str(&line[start..i]);
            }
        }
        self.out.push('\n');
    }

    fn eval(&self, expr: &str) -> std::result::Result<i64, String> {
        let tokens = tokenize(expr)?;
        let mut p = ExprParser { tokens: &tokens, pos: 0, defines: &self.defines };
        let v = p.or()?;
        if p.pos != tokens.len() {
            return Err(format!("unexpected {:?} in #if expression {expr:?}", tokens[p.pos]));
        }
        Ok(v)
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(i64),
    Ident(String),
    Op(&'static str),
}

fn tokenize(s: &str) -> std::result::Result<Vec<Tok>, String> {
    const OPS: [&str; 16] = ["&&", "||", "==", "!=", "<=", ">=", "!", "<", ">", "(", ")", "-", "+", "*", "/", "%"];
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        if let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) {
            out.push(Tok::Op(op));
            rest = &rest[op.len()..];
        } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
            let end = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
            let digits = rest[..end].trim_end_matches('u');
            out.push(Tok::Num(digits.parse().map_err(|_| format!("bad number {:?}", &rest[..end]))?));
            rest = &rest[end..];
        } else if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            out.push(Tok::Ident(rest[..end].to_string()));
            rest = &rest[end..];
        } else {
            return Err(format!("unexpected character in #if expression {s:?}"));
        }
        rest = rest.trim_start();
    }
    Ok(out)
}

struct ExprParser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    defines: &'a BTreeMap<String, String>,
}

impl ExprParser<'_> {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }

    fn or(&mut self) -> std::result::Result<i64, String> {
        let mut v = self.and()?;
        while self.peek_op("||") {
            self.pos += 1;
            let r = self.and()?;
            v = i64::from(v != 0 || r != 0);
        }
        Ok(v)
    }

    fn and(&mut self) -> std::result::Result<i64, String> {
        let mut v = self.cmp()?;
        while self.peek_op("&&") {
            self.pos += 1;
            let r = self.cmp()?;
            v = i64::from(v != 0 && r != 0);
        }
        Ok(v)
    }

    fn cmp(&mut self) -> std::result::Result<i64, String> {
        let l = self.sum()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.peek_op(op) {
                self.pos += 1;
                let r = self.sum()?;
                return Ok(i64::from(match op {
                    "==" => l == r,
                    "!=" => l != r,
                    "<=" => l <= r,
                    ">=" => l >= r,
                    "<" => l < r,
                    _ => l > r,
                }));
            }
        }
        Ok(l)
    }

    fn sum(&mut self) -> std::result::Result<i64, String> {
        let mut v = self.product()?;
        loop {
            if self.peek_op("+") {
                self.pos += 1;
                v += self.product()?;
            } else if self.peek_op("-") {
                self.pos += 1;
                v -= self.product()?;
            } else {
                return Ok(v);
            }
        }
    }

    fn product(&mut self) -> std::result::Result<i64, String> {
        let mut v = self.unary()?;
        loop {
            let op = ["*", "/", "%"].into_iter().find(|op| self.peek_op(op));
            let Some(op) = op else {
                return Ok(v);
            };
            self.pos += 1;
            let r = self.unary()?;
            v = match op {
                "*" => v * r,
                _ if r == 0 => return Err("division by zero in #if expression".into()),
                "/" => v / r,
                _ => v % r,
            };
        }
    }

    fn unary(&mut self) -> std::result::Result<i64, String> {
        if self.peek_op("!") {
            self.pos += 1;
            return Ok(i64::from(self.unary()? == 0));
        }
        if self.peek_op("-") {
            self.pos += 1;
            return Ok(-self.unary()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> std::result::Result<i64, String> {
        let tok = self.tokens.get(self.pos).cloned().ok_or("expression ends early")?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(n),
            Tok::Op("(") => {
                let v = self.or()?;
                if !self.peek_op(")") {
                    return Err("missing )".into());
                }
                self.pos += 1;
                Ok(v)
            }
            Tok::Ident(name) if name == "defined" => {
                let paren = self.peek_op("(");
                if paren {
                    self.pos += 1;
                }
                let Some(Tok::Ident(n)) = self.tokens.get(self.pos).cloned() else {
                    return Err("defined needs a name".into());
                };
                self.pos += 1;
                if paren {
                    if !self.peek_op(")") {
                        return Err("missing ) after defined(".into());
                    }
                    self.pos += 1;
                }
                Ok(i64::from(self.defines.contains_key(&n)))
            }
            Tok::Ident(name) => match self.defines.get(&name) {
                None => Ok(0),
                Some(v) if v.is_empty() => Ok(1),
                Some(v) => {
                    let v = v.trim().trim_end_matches('u');
                    v.parse().map_err(|_| format!("{name} = {v:?} is not an integer"))
                }
            },
            Tok::Op(op) => Err(format!("unexpected {op}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(files: &[(&'static str, &'static str)], defines: &[(&str, &str)]) -> Result<String> {
        let defs: Vec<(String, String)> = defines.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ShaderRegistry::new(files).preprocess(files[0].0, &defs)
    }

    #[test]
    fn conditionals_and_substitution() {
        let src = "#if F16 && TILE >= 16\nenable f16;\n#elif defined(X)\nx\n#else\nno\n#endif\nvar a: array<f32, TILE>; // TILE\n";
        let out = pp(&[("a.wgsl", src)], &[("F16", ""), ("TILE", "16")]).unwrap();
        assert_eq!(out, "enable f16;\nvar a: array<f32, 16>; // TILE\n");
        let out = pp(&[("a.wgsl", src)], &[("X", ""), ("TILE", "8")]).unwrap();
        assert_eq!(out, "x\nvar a: array<f32, 8>; // TILE\n");
        let out = pp(&[("a.wgsl", src)], &[("TILE", "8")]).unwrap();
        assert_eq!(out, "no\nvar a: array<f32, 8>; // TILE\n");
    }

    #[test]
    fn nested_inactive_branches_stay_inactive() {
        let src = "#if 0\n#if 1\nbad\n#else\nbad\n#endif\n#else\ngood\n#endif\n";
        assert_eq!(pp(&[("a.wgsl", src)], &[]).unwrap(), "good\n");
    }

    #[test]
    fn include_once_and_defines_from_source() {
        let files = [
            ("main.wgsl", "#include \"common.wgsl\"\n#include \"common.wgsl\"\n#define N 3\nlet n = N;\n"),
            ("common.wgsl", "fn common() {}\n"),
        ];
        assert_eq!(pp(&files, &[]).unwrap(), "fn common() {}\nlet n = 3;\n");
    }

    #[test]
    fn for_repeats_with_the_index_substituted() {
        let src = "#for I in 0..N / 2\n#for J in 0..2\nx[I][J] = I * 2 + J;\n#endfor\n#endfor\n";
        let out = pp(&[("a.wgsl", src)], &[("N", "4")]).unwrap();
        assert_eq!(out, "x[0][0] = 0 * 2 + 0;\nx[0][1] = 0 * 2 + 1;\nx[1][0] = 1 * 2 + 0;\nx[1][1] = 1 * 2 + 1;\n");
        let src = "#for I in 0..3\n#if I % 2 == 0\ne I\n#endif\n#endfor\nI\n";
        assert_eq!(pp(&[("a.wgsl", src)], &[]).unwrap(), "e 0\ne 2\nI\n");
        let e = pp(&[("a.wgsl", "#for I in 0..2\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("#for without #endfor"), "{e}");
        let e = pp(&[("a.wgsl", "#for 3 in 0..2\n#endfor\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("NAME in A..B"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = pp(&[("a.wgsl", "x\n#endif\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("a.wgsl:2") && e.contains("#endif without #if"), "{e}");
        let e = pp(&[("a.wgsl", "#if 1\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("unterminated"), "{e}");
        let e = pp(&[("a.wgsl", "#include \"missing.wgsl\"\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("missing.wgsl") && e.contains("not in the shader registry"), "{e}");
        let e = pp(&[("a.wgsl", "#pragma x\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("unknown directive"), "{e}");
        let e = pp(&[("a.wgsl", "#if (1\n#endif\n")], &[]).unwrap_err().to_string();
        assert!(e.contains("missing )"), "{e}");
    }
}
