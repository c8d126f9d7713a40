//! The manifest as written: a tree of spanned nodes, arguments and properties.
//!
//! The AST is deliberately untyped (a node is a name, values and children) so that it can hold
//! any well-formed KDL; the language's shape is checked against
//! [`vocabulary`](super::vocabulary) by the model's rules, which report *every* mismatch instead
//! of failing on the first one. Every piece carries its byte [`Span`] in the source.

pub use crate::diag::Span;

/// A whole manifest: its top-level nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub nodes: Vec<Node>,
    pub span: Span,
}

/// One KDL node: `name arg… key=value… { children }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: Ident,
    /// A `(type)` annotation on the node, which the language does not use (reported).
    pub ty: Option<Ident>,
    pub args: Vec<Value>,
    /// Properties in source order; duplicates are kept so they can be reported.
    pub props: Vec<Prop>,
    /// `None` when the node has no `{ … }` block.
    pub children: Option<Vec<Node>>,
    /// The whole node, children included.
    pub span: Span,
}

/// A node or property name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

/// `key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prop {
    pub name: Ident,
    pub value: Value,
    /// `key=value` as a whole.
    pub span: Span,
}

/// An argument or property value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub data: Data,
    /// A `(type)` annotation on the value, which the language does not use (reported).
    pub ty: Option<Ident>,
    pub span: Span,
}

/// The KDL value itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    String(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl Data {
    /// How a value of this type is called in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::String(_) => "a string",
            Data::Integer(_) => "an integer",
            Data::Float(_) => "a decimal number",
            Data::Bool(_) => "a boolean",
            Data::Null => "#null",
        }
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match &self.data {
            Data::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self.data {
            Data::Integer(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.data {
            Data::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl Node {
    /// The node's name as text.
    pub fn name(&self) -> &str {
        &self.name.text
    }

    /// Child nodes (empty when there is no block).
    pub fn children(&self) -> &[Node] {
        self.children.as_deref().unwrap_or(&[])
    }

    /// Child nodes with this name, in order.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children().iter().filter(move |n| n.name.text == name)
    }

    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children().iter().find(|n| n.name.text == name)
    }

    /// The first property with this key (the language reports duplicates separately).
    pub fn prop(&self, key: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name.text == key)
    }

    /// The string value of property `key`, when it is a string.
    pub fn prop_str(&self, key: &str) -> Option<&str> {
        self.prop(key).and_then(|p| p.value.as_str())
    }

    /// The first argument, when it is a string: the "NAME" of `database NAME`.
    pub fn first_str(&self) -> Option<&str> {
        self.args.first().and_then(Value::as_str)
    }

    /// Every string argument, in order (non-strings are reported by the type rule).
    pub fn str_args(&self) -> impl Iterator<Item = (&str, Span)> {
        self.args
            .iter()
            .filter_map(|v| v.as_str().map(|s| (s, v.span)))
    }

    /// Where to point at "this node": its name.
    pub fn head_span(&self) -> Span {
        self.name.span
    }

    /// Span of the first argument, or of the name when there is none.
    pub fn first_arg_span(&self) -> Span {
        self.args.first().map_or(self.name.span, |v| v.span)
    }
}

impl Manifest {
    /// Top-level nodes with this name.
    pub fn nodes_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.name.text == name)
    }
}
