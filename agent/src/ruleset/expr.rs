//! Tiny builders over the `nftables` crate's JSON schema, so the renderer reads
//! like the rules it writes.

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem, CT,
};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement};
use palisade_model::Family;
use std::borrow::Cow;
use std::net::IpAddr;

pub fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `ip saddr` or `ip6 saddr`.
pub fn saddr(family: Family) -> Expression<'static> {
    match family {
        Family::V4 => payload("ip", "saddr"),
        Family::V6 => payload("ip6", "saddr"),
    }
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

pub fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

pub fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

pub fn set_ref(name: &str) -> Expression<'static> {
    string(format!("@{name}"))
}

pub fn number(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

pub fn range(first: u32, last: u32) -> Expression<'static> {
    Expression::Range(Box::new(Range {
        range: [number(first), number(last)],
    }))
}

pub fn anon_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub fn prefix(addr: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(addr.to_string())),
        len: len.into(),
    }))
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

pub fn is_in(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::IN,
    })
}

pub fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

pub fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

pub fn goto(chain: &str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}
