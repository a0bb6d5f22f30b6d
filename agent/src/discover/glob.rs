//! Glob patterns in include directives (`#include pjsip_custom*.conf`,
//! `X-PRE-PROCESS cmd="include" data="sip_profiles/*.xml"`), matched like
//! glob(3), which both Asterisk and FreeSWITCH use: `*`, `?` and `[...]`
//! classes within one path component, hidden files only for a pattern that
//! starts with `.`. Hand-written (60 lines) rather than pulling in a crate for
//! directory walking we do not need.

use std::path::{Path, PathBuf};

pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The entries of `dir` whose names match `pattern`, in glob(3)'s sorted
/// order. A directory that cannot be read matches nothing.
pub fn matches_in(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| pattern.starts_with('.') || !name.starts_with('.'))
        .filter(|name| fnmatch(pattern, name))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

/// Shell-style matching of one path component: `*`, `?` and `[...]` classes
/// (`!`/`^` negation, `a-z` ranges); a `[` without `]` is literal.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            if p[pi] == '*' {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            if let Some(next) = match_one(&p, pi, s[si]) {
                pi = next;
                si += 1;
                continue;
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether the pattern token at `pi` matches `c`; returns the next token.
fn match_one(p: &[char], pi: usize, c: char) -> Option<usize> {
    match p[pi] {
        '?' => Some(pi + 1),
        '[' => match class(p, pi) {
            Some((end, matches)) => matches(c).then_some(end),
            None => (c == '[').then_some(pi + 1),
        },
        lit => (lit == c).then_some(pi + 1),
    }
}

/// Parses a `[...]` class at `pi`: the index after `]` and a matcher.
fn class(p: &[char], pi: usize) -> Option<(usize, impl Fn(char) -> bool + '_)> {
    let mut i = pi + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let start = i;
    // A `]` first in the class is a member, not the end.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    while *p.get(i)? != ']' {
        i += 1;
    }
    let members = &p[start..i];
    let matcher = move |c: char| {
        let mut k = 0;
        let mut hit = false;
        while k < members.len() {
            if k + 2 < members.len() && members[k + 1] == '-' {
                hit |= members[k] <= c && c <= members[k + 2];
                k += 3;
            } else {
                hit |= members[k] == c;
                k += 1;
            }
        }
        hit != negate
    };
    Some((i + 1, matcher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_glob() {
        assert!(fnmatch("*.xml", "internal.xml"));
        assert!(!fnmatch("*.xml", "internal.xml.bak"));
        assert!(fnmatch("int?rnal.xml", "internal.xml"));
        assert!(fnmatch("[ei]*.xml", "external.xml"));
        assert!(!fnmatch("[!ei]*.xml", "external.xml"));
        assert!(fnmatch("[a-f]x", "cx"));
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("a*b*c", "aXXbYYc"));
        assert!(!fnmatch("a*b*c", "aXXbYY"));
    }

    #[test]
    fn fnmatcher() {
        assert!(fnmatch("*.conf", "pjsip.conf"));
        assert!(fnmatch("pjsip_custom*.conf", "pjsip_custom.conf"));
        assert!(fnmatch("pjsip_custom*.conf", "pjsip_custom_post.conf"));
        assert!(!fnmatch("pjsip_custom*.conf", "pjsip.conf"));
        assert!(fnmatch("a?c", "abc"));
        assert!(!fnmatch("a?c", "ac"));
        assert!(fnmatch("*", "x"));
        assert!(fnmatch("*a*b*c", "xxaxxbxxc"));
        assert!(!fnmatch("*a*b*c", "xxaxxcxxb"));
        assert!(fnmatch("**", ""));
    }

    #[test]
    fn hidden_files_only_for_a_dotted_pattern_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.conf", "a.conf", ".hidden.conf", "c.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let names = |p: &str| -> Vec<String> {
            matches_in(dir.path(), p)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names("*.conf"), ["a.conf", "b.conf"]);
        assert_eq!(names(".*"), [".hidden.conf"]);
        assert!(names("*.xml").is_empty());
        assert!(matches_in(&dir.path().join("absent"), "*").is_empty());
    }
}
