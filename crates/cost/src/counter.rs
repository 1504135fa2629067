//! [`Counter`]: the [`Ops`] implementation over shapes.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

use unetlab_graph::{Conv2dParams, Init, MissingInput, Ops, Role, ScopeStack, Unary};

use crate::report::{BlockSignature, Conditions, CostReport, Macs, ParamInfo, ScopeCost};

const BYTES_PER_ELEMENT: u64 = 4;

/// A shape-inconsistent op: a bug in a forward or an impossible config.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} in `{scope}`: {message}")]
pub struct CostError {
    /// Module path where it happened.
    pub scope: String,
    /// The op.
    pub op: &'static str,
    /// What did not fit.
    pub message: String,
}

impl CostError {
    pub(crate) fn new(scope: &str, op: &'static str, message: impl Into<String>) -> Self {
        Self {
            scope: scope.to_string(),
            op,
            message: message.into(),
        }
    }
}

impl From<MissingInput> for CostError {
    fn from(e: MissingInput) -> Self {
        CostError::new("", "input", e.to_string())
    }
}

/// An activation buffer; its bytes count as live until the last handle drops.
#[derive(Debug)]
struct Buffer {
    bytes: u64,
    live: Rc<Cell<u64>>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.live.set(self.live.get() - self.bytes);
    }
}

/// A symbolic tensor: dimensions, and the activation buffer it views (none for parameters).
#[derive(Debug, Clone)]
pub struct Sym {
    dims: Vec<usize>,
    _buffer: Option<Rc<Buffer>>,
}

impl Sym {
    /// Dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    fn numel(&self) -> u64 {
        numel(&self.dims)
    }

    fn view(&self, dims: Vec<usize>) -> Sym {
        Sym {
            dims,
            _buffer: self._buffer.clone(),
        }
    }
}

fn numel(dims: &[usize]) -> u64 {
    dims.iter().map(|&d| d as u64).product()
}

/// Counts parameters, MACs and activation memory while the forward runs on shapes.
#[derive(Debug)]
pub struct Counter {
    scope: ScopeStack,
    scopes: Vec<ScopeCost>,
    scope_index: HashMap<Vec<String>, usize>,
    parameters: Vec<ParamInfo>,
    names: HashSet<String>,
    live: Rc<Cell<u64>>,
    peak: u64,
    total: u64,
    blocks: Vec<BlockSignature>,
    /// The blocks being traced: (scope depth, index into `blocks`, the trace so far).
    open: Vec<(usize, usize, String)>,
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Counter {
    /// An empty counter.
    pub fn new() -> Self {
        Counter {
            scope: ScopeStack::default(),
            scopes: Vec::new(),
            scope_index: HashMap::new(),
            parameters: Vec::new(),
            names: HashSet::new(),
            live: Rc::new(Cell::new(0)),
            peak: 0,
            total: 0,
            blocks: Vec::new(),
            open: Vec::new(),
        }
    }

    /// A forward input of the given shape (its buffer counts as an activation).
    pub fn input(&mut self, dims: &[usize]) -> Sym {
        self.alloc(dims.to_vec())
    }

    /// The report; call after dropping every tensor.
    pub fn finish(self, conditions: Conditions) -> CostReport {
        let macs = self.scopes.iter().fold(Macs::default(), |mut m, s| {
            m.add(&s.macs);
            m
        });
        CostReport {
            conditions,
            parameters: self.parameters,
            macs,
            peak_activation_bytes: self.peak,
            total_activation_bytes: self.total,
            scopes: self.scopes,
            blocks: self.blocks,
        }
    }

    fn alloc(&mut self, dims: Vec<usize>) -> Sym {
        let bytes = numel(&dims) * BYTES_PER_ELEMENT;
        self.live.set(self.live.get() + bytes);
        self.peak = self.peak.max(self.live.get());
        self.total += bytes;
        Sym {
            dims,
            _buffer: Some(Rc::new(Buffer {
                bytes,
                live: self.live.clone(),
            })),
        }
    }

    fn record(&mut self, params: u64, macs: Macs) {
        if params == 0 && macs.total() == 0 {
            return;
        }
        let i = match self.scope_index.get(self.scope.names()) {
            Some(&i) => i,
            None => {
                self.scopes.push(ScopeCost {
                    path: self.scope.names().to_vec(),
                    place: self.scope.place(),
                    params: 0,
                    macs: Macs::default(),
                });
                self.scope_index
                    .insert(self.scope.names().to_vec(), self.scopes.len() - 1);
                self.scopes.len() - 1
            }
        };
        self.scopes[i].params += params;
        self.scopes[i].macs.add(&macs);
        if let Some(&(_, b, _)) = self.open.last() {
            self.blocks[b].params += params;
            self.blocks[b].macs.add(&macs);
        }
    }

    /// Appends one op and the shapes it works on to the innermost open block's trace: two
    /// blocks with equal traces run the same ops on the same shapes.
    fn trace(&mut self, op: &str, shapes: &[&[usize]], detail: std::fmt::Arguments<'_>) {
        if let Some((_, _, text)) = self.open.last_mut() {
            // Writing to a String cannot fail.
            let _ = write!(text, "{op}{shapes:?}{detail};");
        }
    }

    fn err(&self, op: &'static str, message: impl Into<String>) -> CostError {
        CostError::new(&self.scope.path(), op, message)
    }

    fn ensure(
        &self,
        ok: bool,
        op: &'static str,
        message: impl FnOnce() -> String,
    ) -> Result<(), CostError> {
        if ok {
            Ok(())
        } else {
            Err(self.err(op, message()))
        }
    }

    fn same_shape(&mut self, x: &Sym) -> Sym {
        self.alloc(x.dims.clone())
    }

    fn broadcast(&mut self, op: &'static str, a: &Sym, b: &Sym) -> Result<Sym, CostError> {
        let n = a.dims.len().max(b.dims.len());
        let pad = |d: &[usize]| {
            let mut v = vec![1; n - d.len()];
            v.extend_from_slice(d);
            v
        };
        let (pa, pb) = (pad(&a.dims), pad(&b.dims));
        let mut out = Vec::with_capacity(n);
        for (&x, &y) in pa.iter().zip(&pb) {
            self.ensure(x == y || x == 1 || y == 1, op, || {
                format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims)
            })?;
            out.push(x.max(y));
        }
        Ok(self.alloc(out))
    }

    fn norm_params(&self, op: &'static str, c: usize, w: &Sym, b: &Sym) -> Result<(), CostError> {
        self.ensure(w.dims == [c] && b.dims == [c], op, || {
            format!(
                "scale {:?} / shift {:?} do not match {c} channels",
                w.dims, b.dims
            )
        })
    }
}

impl Ops for Counter {
    type Tensor = Sym;
    type Error = CostError;

    fn dims(&self, x: &Sym) -> Vec<usize> {
        x.dims.clone()
    }

    fn push_scope(&mut self, name: &str, role: Option<Role>) {
        self.scope.push(name, role);
        if let Some(Role::Block(_)) = role {
            self.blocks.push(BlockSignature {
                path: self.scope.path(),
                place: self.scope.place(),
                signature: String::new(),
                params: 0,
                macs: Macs::default(),
            });
            self.open
                .push((self.scope.depth(), self.blocks.len() - 1, String::new()));
        }
    }

    fn pop_scope(&mut self) {
        if self
            .open
            .last()
            .is_some_and(|(depth, _, _)| *depth == self.scope.depth())
        {
            let (_, b, text) = self.open.pop().expect("checked");
            self.blocks[b].signature = unetlab_files::sha256_hex(text.as_bytes())[..16].to_string();
        }
        self.scope.pop();
    }

    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Sym, CostError> {
        let full = self.scope.param_name(name);
        self.ensure(!self.names.contains(&full), "param", || {
            format!("`{full}` declared twice")
        })?;
        self.ensure(shape.iter().all(|&d| d > 0), "param", || {
            format!("`{full}` has an empty dimension {shape:?}")
        })?;
        self.names.insert(full.clone());
        self.record(numel(shape), Macs::default());
        self.parameters.push(ParamInfo {
            name: full,
            shape: shape.to_vec(),
            init,
        });
        Ok(Sym {
            dims: shape.to_vec(),
            _buffer: None,
        })
    }

    fn conv2d(
        &mut self,
        x: &Sym,
        w: &Sym,
        b: Option<&Sym>,
        p: Conv2dParams,
    ) -> Result<Sym, CostError> {
        let (xd, wd) = (&x.dims, &w.dims);
        self.ensure(
            xd.len() == 4 && wd.len() == 4 && wd[2] == wd[3],
            "conv2d",
            || format!("input {xd:?} / weight {wd:?} are not NCHW / square OIHW"),
        )?;
        self.ensure(
            p.groups > 0
                && xd[1] % p.groups == 0
                && wd[0] % p.groups == 0
                && wd[1] * p.groups == xd[1],
            "conv2d",
            || {
                format!(
                    "input {xd:?}, weight {wd:?} and groups {} disagree",
                    p.groups
                )
            },
        )?;
        if let Some(b) = b {
            self.ensure(b.dims == [wd[0]], "conv2d", || {
                format!("bias {:?} for {} outputs", b.dims, wd[0])
            })?;
        }
        let k = wd[2];
        let out_size = |s: usize| (s + 2 * p.padding).checked_sub(k).map(|v| v / p.stride + 1);
        let (Some(h), Some(wo)) = (out_size(xd[2]), out_size(xd[3])) else {
            return Err(self.err(
                "conv2d",
                format!("kernel {k} larger than padded input {xd:?}"),
            ));
        };
        let out = vec![xd[0], wd[0], h, wo];
        self.trace(
            "conv2d",
            &[xd, wd],
            format_args!("s{}p{}g{}b{}", p.stride, p.padding, p.groups, b.is_some()),
        );
        let macs = numel(&out) * (wd[1] * k * k) as u64;
        self.record(
            0,
            Macs {
                conv: macs,
                ..Macs::default()
            },
        );
        Ok(self.alloc(out))
    }

    fn linear(&mut self, x: &Sym, w: &Sym, b: Option<&Sym>) -> Result<Sym, CostError> {
        let cin = *x.dims.last().unwrap_or(&0);
        self.ensure(w.dims.len() == 2 && w.dims[1] == cin, "linear", || {
            format!("input {:?} does not fit weight {:?}", x.dims, w.dims)
        })?;
        if let Some(b) = b {
            self.ensure(b.dims == [w.dims[0]], "linear", || {
                format!("bias {:?} for weight {:?}", b.dims, w.dims)
            })?;
        }
        self.trace(
            "linear",
            &[&x.dims, &w.dims],
            format_args!("b{}", b.is_some()),
        );
        let mut out = x.dims.clone();
        *out.last_mut().expect("checked non-empty") = w.dims[0];
        let macs = numel(&out) * cin as u64;
        self.record(
            0,
            Macs {
                linear: macs,
                ..Macs::default()
            },
        );
        Ok(self.alloc(out))
    }

    fn matmul(&mut self, a: &Sym, b: &Sym) -> Result<Sym, CostError> {
        let (ad, bd) = (&a.dims, &b.dims);
        let n = ad.len();
        self.ensure(
            n >= 2 && bd.len() == n && ad[..n - 2] == bd[..n - 2] && ad[n - 1] == bd[n - 2],
            "matmul",
            || format!("{ad:?} × {bd:?} do not multiply"),
        )?;
        self.trace("matmul", &[ad, bd], format_args!(""));
        let mut out = ad[..n - 1].to_vec();
        out.push(bd[n - 1]);
        let macs = numel(&out) * ad[n - 1] as u64;
        self.record(
            0,
            Macs {
                attention: macs,
                ..Macs::default()
            },
        );
        Ok(self.alloc(out))
    }

    fn group_norm(
        &mut self,
        x: &Sym,
        groups: usize,
        _eps: f64,
        w: &Sym,
        b: &Sym,
    ) -> Result<Sym, CostError> {
        let c = x.dims.get(1).copied().unwrap_or(0);
        self.ensure(groups > 0 && c % groups == 0, "group_norm", || {
            format!("{c} channels do not split into {groups} groups")
        })?;
        self.norm_params("group_norm", c, w, b)?;
        self.trace("group_norm", &[&x.dims], format_args!("g{groups}"));
        Ok(self.same_shape(x))
    }

    fn layer_norm(&mut self, x: &Sym, _eps: f64, w: &Sym, b: &Sym) -> Result<Sym, CostError> {
        let c = *x.dims.last().unwrap_or(&0);
        self.norm_params("layer_norm", c, w, b)?;
        self.trace("layer_norm", &[&x.dims], format_args!(""));
        Ok(self.same_shape(x))
    }

    fn softmax_last(&mut self, x: &Sym) -> Result<Sym, CostError> {
        self.trace("softmax", &[&x.dims], format_args!(""));
        Ok(self.same_shape(x))
    }

    fn unary(&mut self, x: &Sym, op: Unary) -> Result<Sym, CostError> {
        self.trace("unary", &[&x.dims], format_args!("{op:?}"));
        Ok(self.same_shape(x))
    }

    fn scale(&mut self, x: &Sym, _scale: f64) -> Result<Sym, CostError> {
        self.trace("scale", &[&x.dims], format_args!(""));
        Ok(self.same_shape(x))
    }

    fn add(&mut self, a: &Sym, b: &Sym) -> Result<Sym, CostError> {
        self.trace("add", &[&a.dims, &b.dims], format_args!(""));
        self.broadcast("add", a, b)
    }

    fn mul(&mut self, a: &Sym, b: &Sym) -> Result<Sym, CostError> {
        self.trace("mul", &[&a.dims, &b.dims], format_args!(""));
        self.broadcast("mul", a, b)
    }

    fn reshape(&mut self, x: &Sym, dims: &[usize]) -> Result<Sym, CostError> {
        self.ensure(numel(dims) == x.numel(), "reshape", || {
            format!(
                "{:?} has {} elements, {dims:?} has {}",
                x.dims,
                x.numel(),
                numel(dims)
            )
        })?;
        Ok(x.view(dims.to_vec()))
    }

    fn permute(&mut self, x: &Sym, perm: &[usize]) -> Result<Sym, CostError> {
        let mut seen = vec![false; x.dims.len()];
        for &p in perm {
            if p < seen.len() {
                seen[p] = true;
            }
        }
        self.ensure(
            perm.len() == x.dims.len() && seen.iter().all(|&s| s),
            "permute",
            || format!("{perm:?} is not a permutation of {:?}", x.dims),
        )?;
        self.trace("permute", &[&x.dims, perm], format_args!(""));
        Ok(x.view(perm.iter().map(|&p| x.dims[p]).collect()))
    }

    fn concat(&mut self, xs: &[&Sym], dim: usize) -> Result<Sym, CostError> {
        let first = xs.first().ok_or_else(|| self.err("concat", "no inputs"))?;
        let mut out = first.dims.clone();
        self.ensure(dim < out.len(), "concat", || {
            format!("dim {dim} out of range for {out:?}")
        })?;
        out[dim] = 0;
        for x in xs {
            let ok = x.dims.len() == first.dims.len()
                && x.dims
                    .iter()
                    .zip(&first.dims)
                    .enumerate()
                    .all(|(i, (a, b))| i == dim || a == b);
            self.ensure(ok, "concat", || {
                format!("{:?} and {:?} differ off dim {dim}", first.dims, x.dims)
            })?;
            out[dim] += x.dims[dim];
        }
        self.trace("concat", &[&out], format_args!("d{dim}n{}", xs.len()));
        Ok(self.alloc(out))
    }

    fn narrow(&mut self, x: &Sym, dim: usize, start: usize, len: usize) -> Result<Sym, CostError> {
        self.ensure(
            dim < x.dims.len() && start + len <= x.dims[dim],
            "narrow",
            || format!("{start}..{} out of {:?} at dim {dim}", start + len, x.dims),
        )?;
        let mut out = x.dims.clone();
        out[dim] = len;
        Ok(x.view(out))
    }

    fn upsample_nearest2x(&mut self, x: &Sym) -> Result<Sym, CostError> {
        self.ensure(x.dims.len() == 4, "upsample", || {
            format!("{:?} is not NCHW", x.dims)
        })?;
        let d = x.dims.clone();
        self.trace("upsample", &[&d], format_args!(""));
        Ok(self.alloc(vec![d[0], d[1], 2 * d[2], 2 * d[3]]))
    }

    fn sinusoidal(
        &mut self,
        x: &Sym,
        channels: usize,
        _flip: bool,
        _shift: f64,
    ) -> Result<Sym, CostError> {
        self.trace("sinusoidal", &[&x.dims], format_args!("c{channels}"));
        let mut out = x.dims.clone();
        out.push(channels);
        Ok(self.alloc(out))
    }
}
