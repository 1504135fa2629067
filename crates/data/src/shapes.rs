//! The procedural dataset: one or two coloured shapes on a dark background, with captions that
//! name every attribute and can be parsed back (see the crate documentation).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::Example;

/// A shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upward-pointing isosceles triangle filling the object's box.
    Triangle,
}

impl Shape {
    /// Every shape, in declaration order.
    pub const ALL: &'static [Shape] = &[Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

/// An object colour (never the background colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// White.
    White,
}

impl Colour {
    /// Every colour, in declaration order.
    pub const ALL: &'static [Colour] = &[
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::White,
    ];

    /// The colour as RGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.90, 0.10, 0.10],
            Colour::Green => [0.10, 0.75, 0.20],
            Colour::Blue => [0.15, 0.30, 0.95],
            Colour::Yellow => [0.95, 0.90, 0.10],
            Colour::Purple => [0.60, 0.15, 0.80],
            Colour::White => [0.95, 0.95, 0.95],
        }
    }

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::White => "white",
        }
    }
}

/// An object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Size {
    /// [`SMALL_EXTENT`] of the image side.
    Small,
    /// [`LARGE_EXTENT`] of the image side.
    Large,
}

impl Size {
    /// Every size, in declaration order.
    pub const ALL: &'static [Size] = &[Size::Small, Size::Large];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The side of the object's bounding box (a circle's diameter) as a fraction of the image side.
    pub fn extent(self) -> f32 {
        match self {
            Size::Small => SMALL_EXTENT,
            Size::Large => LARGE_EXTENT,
        }
    }
}

/// Where the first object of a two-object scene is relative to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Relation {
    /// Smaller x.
    LeftOf,
    /// Larger x.
    RightOf,
    /// Smaller y (image y points down).
    Above,
    /// Larger y.
    Below,
}

impl Relation {
    /// Every relation, in declaration order.
    pub const ALL: &'static [Relation] = &[
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The words used in captions: "to the left of", "to the right of", "above", "below".
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The relation seen from the other object: left of ↔ right of, above ↔ below.
    pub fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// Whether the relation is along the x axis (left of, right of).
    pub fn is_horizontal(self) -> bool {
        matches!(self, Relation::LeftOf | Relation::RightOf)
    }
}

/// One object: its attributes and the centre of its bounding box in `[0, 1]` image coordinates
/// (x to the right, y down).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// The shape.
    pub shape: Shape,
    /// The colour.
    pub colour: Colour,
    /// The size.
    pub size: Size,
    /// Centre x in `[0, 1]`, left to right.
    pub x: f32,
    /// Centre y in `[0, 1]`, top to bottom.
    pub y: f32,
}

impl Object {
    /// The attributes (shape, colour, size), without the position.
    pub fn attributes(&self) -> (Shape, Colour, Size) {
        (self.shape, self.colour, self.size)
    }

    /// Half the side of the bounding box, as a fraction of the image side.
    pub fn half_extent(&self) -> f32 {
        self.size.extent() / 2.0
    }

    fn phrase(&self) -> String {
        format!(
            "a {} {} {}",
            self.size.name(),
            self.colour.name(),
            self.shape.name()
        )
    }
}

/// 1 or 2 objects on a dark grey background ([`BACKGROUND`], none of the [`Colour`] values).
///
/// With two objects, `relation` says where `objects[0]` is relative to `objects[1]`; generated
/// scenes make it true with a clear margin (bounding boxes at least [`GAP`] apart along the
/// relation's axis, the offset across it at most [`MAX_SLOPE`] times the offset along it) and
/// the objects do not overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// The objects, drawn in order.
    pub objects: Vec<Object>,
    /// For two objects, where `objects[0]` is relative to `objects[1]`; ignored otherwise.
    pub relation: Option<Relation>,
}

impl Scene {
    /// Canonical form for evaluation: for two objects with a relation, order them so that
    /// `objects[0]` is the left one for horizontal relations (the relation becomes
    /// [`Relation::LeftOf`]) and the upper one for vertical relations (it becomes
    /// [`Relation::Above`]). The same picture described two ways ("A left of B" and "B right of
    /// A") has one canonical form. Scenes without a relation have their objects sorted by
    /// attributes (shape, colour, size); positions travel with their objects.
    pub fn canonical(&self) -> Scene {
        let mut objects = self.objects.clone();
        let relation = match (objects.len(), self.relation) {
            (2, Some(relation)) => Some(match relation {
                Relation::LeftOf | Relation::Above => relation,
                Relation::RightOf | Relation::Below => {
                    objects.swap(0, 1);
                    relation.inverse()
                }
            }),
            (_, relation) => {
                objects.sort_by_key(Object::attributes);
                relation
            }
        };
        Scene { objects, relation }
    }

    /// Whether two scenes describe the same picture up to positions: their canonical forms have
    /// the same relation and the same attributes object by object.
    pub fn same_description(&self, other: &Scene) -> bool {
        let (a, b) = (self.canonical(), other.canonical());
        let relation = |s: &Scene| {
            if s.objects.len() == 2 {
                s.relation
            } else {
                None
            }
        };
        relation(&a) == relation(&b)
            && a.objects.len() == b.objects.len()
            && a.objects
                .iter()
                .zip(&b.objects)
                .all(|(p, q)| p.attributes() == q.attributes())
    }
}

/// The background colour, RGB in `[0, 1]`: dark grey.
pub const BACKGROUND: [f32; 3] = [0.25, 0.25, 0.25];
/// Side of a small object's bounding box as a fraction of the image side (8 px at 32×32).
pub const SMALL_EXTENT: f32 = 0.25;
/// Side of a large object's bounding box as a fraction of the image side (13.4 px at 32×32).
pub const LARGE_EXTENT: f32 = 0.42;
/// Smallest distance from an object's bounding box to the image edge, as a fraction of the side.
pub const BORDER: f32 = 0.02;
/// Smallest gap between the two bounding boxes along the relation's axis, as a fraction of the side.
pub const GAP: f32 = 0.06;
/// Largest ratio of the centres' offset across the relation's axis to their offset along it.
pub const MAX_SLOPE: f32 = 0.5;
/// Number of caption templates ([`caption`] takes the template modulo this).
pub const TEMPLATES: usize = 4;
/// Probability that a generated scene has a single object.
pub const SINGLE_OBJECT_PROBABILITY: f64 = 0.25;
/// The seed of the validation split, whatever the training seed.
pub const VALIDATION_SEED: u64 = 0x5641_4c49_4441_5445;

/// Subsamples per pixel side used for anti-aliasing (`SUPERSAMPLE²` per pixel).
const SUPERSAMPLE: usize = 4;

/// A split of the procedural dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// Training: streams keyed by the dataset's seed.
    Train,
    /// Validation: streams keyed by [`VALIDATION_SEED`], the same for every training seed.
    Validation,
}

/// The procedural dataset: seeded, unbounded, with a fixed validation split disjoint from
/// training. Example `i` of a split is drawn from its own ChaCha8 stream keyed by
/// `(seed, split, i)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shapes {
    /// Side of the rendered images in pixels.
    pub image_size: usize,
    /// Seed of the training split.
    pub seed: u64,
}

impl Shapes {
    /// A dataset rendering `image_size × image_size` images, training split seeded by `seed`.
    pub fn new(image_size: usize, seed: u64) -> Shapes {
        Shapes { image_size, seed }
    }

    /// Training example `index` (any `u64`): deterministic in `(seed, index)`.
    pub fn train(&self, index: u64) -> Example {
        self.example(Split::Train, index)
    }

    /// Validation example `index`: depends only on the image size, [`VALIDATION_SEED`] and
    /// `index`, so every run and every variant is evaluated on the same images whatever its
    /// training seed.
    pub fn validation(&self, index: u64) -> Example {
        self.example(Split::Validation, index)
    }

    /// Scene `index` of `split` and its caption (the template is drawn from the same stream).
    pub fn scene(&self, split: Split, index: u64) -> (Scene, String) {
        let mut rng = self.stream(split, index);
        let scene = random_scene(&mut rng);
        let template = rng.random_range(0..TEMPLATES);
        let text = caption(&scene, template);
        (scene, text)
    }

    fn example(&self, split: Split, index: u64) -> Example {
        let (scene, caption) = self.scene(split, index);
        Example {
            image: render(&scene, self.image_size),
            size: self.image_size,
            caption,
            scene: Some(scene),
        }
    }

    fn stream(&self, split: Split, index: u64) -> ChaCha8Rng {
        let (seed, tag) = match split {
            Split::Train => (self.seed, 0u64),
            Split::Validation => (VALIDATION_SEED, 1u64),
        };
        let mut key = [0u8; 32];
        key[0..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&tag.to_le_bytes());
        key[16..24].copy_from_slice(&index.to_le_bytes());
        key[24..32].copy_from_slice(b"shapes\0\x01");
        ChaCha8Rng::from_seed(key)
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_object(rng: &mut ChaCha8Rng) -> Object {
    Object {
        shape: pick(rng, Shape::ALL),
        colour: pick(rng, Colour::ALL),
        size: pick(rng, Size::ALL),
        x: 0.5,
        y: 0.5,
    }
}

fn random_scene(rng: &mut ChaCha8Rng) -> Scene {
    let mut first = random_object(rng);
    if rng.random_bool(SINGLE_OBJECT_PROBABILITY) {
        let h = first.half_extent();
        first.x = uniform(rng, h + BORDER, 1.0 - h - BORDER);
        first.y = uniform(rng, h + BORDER, 1.0 - h - BORDER);
        return Scene {
            objects: vec![first],
            relation: None,
        };
    }
    let mut second = random_object(rng);
    while second.attributes() == first.attributes() {
        second = random_object(rng);
    }
    let relation = pick(rng, Relation::ALL);
    // The object that comes first along the axis (left or upper) and the other one.
    let (lead, trail) = match relation {
        Relation::LeftOf | Relation::Above => (&mut first, &mut second),
        Relation::RightOf | Relation::Below => (&mut second, &mut first),
    };
    let (hl, ht) = (lead.half_extent(), trail.half_extent());
    // Along the axis: lead in [hl + B, ...], trail up to 1 - ht - B, centres at least sep apart.
    let lo = hl + BORDER;
    let sep = hl + ht + GAP;
    let span = (1.0 - ht - BORDER - lo - sep).max(0.0);
    let (t1, t2) = (uniform(rng, 0.0, span), uniform(rng, 0.0, span));
    let lead_along = lo + t1.min(t2);
    let trail_along = lo + sep + t1.max(t2);
    // Across the axis: each inside the image, offset at most MAX_SLOPE × the offset along it.
    let lead_across = uniform(rng, hl + BORDER, 1.0 - hl - BORDER);
    let reach = MAX_SLOPE * (trail_along - lead_along);
    let across_lo = (ht + BORDER).max(lead_across - reach);
    let across_hi = (1.0 - ht - BORDER).min(lead_across + reach);
    let trail_across = uniform(rng, across_lo, across_hi.max(across_lo));
    if relation.is_horizontal() {
        (lead.x, lead.y, trail.x, trail.y) = (lead_along, lead_across, trail_along, trail_across);
    } else {
        (lead.x, lead.y, trail.x, trail.y) = (lead_across, lead_along, trail_across, trail_along);
    }
    Scene {
        objects: vec![first, second],
        relation: Some(relation),
    }
}

/// Whether the point `(u, v)` (image coordinates in `[0, 1]`) is inside `object`.
fn inside(object: &Object, u: f32, v: f32) -> bool {
    let h = object.half_extent();
    let (dx, dy) = (u - object.x, v - object.y);
    match object.shape {
        Shape::Circle => dx * dx + dy * dy <= h * h,
        Shape::Square => dx.abs() <= h && dy.abs() <= h,
        // Apex at (x, y - h), base from (x - h, y + h) to (x + h, y + h).
        Shape::Triangle => dy.abs() <= h && dx.abs() <= (dy + h) / 2.0,
    }
}

/// Draws a scene: `3 × size × size` CHW values in `[-1, 1]`. Objects are drawn in order over the
/// [`BACKGROUND`]; edges are anti-aliased by 4×4 supersampling. Pure and deterministic.
pub fn render(scene: &Scene, size: usize) -> Vec<f32> {
    let n = size * size;
    let mut rgb = vec![0.0f32; 3 * n];
    for (c, plane) in rgb.chunks_exact_mut(n.max(1)).enumerate() {
        plane.fill(BACKGROUND[c]);
    }
    let s = size as f32;
    let samples = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for object in &scene.objects {
        let h = object.half_extent();
        let pixel_range = |centre: f32| {
            let lo = ((centre - h) * s).floor().max(0.0) as usize;
            let hi = (((centre + h) * s).ceil().max(0.0) as usize).min(size);
            lo..hi
        };
        let colour = object.colour.rgb();
        for py in pixel_range(object.y) {
            for px in pixel_range(object.x) {
                let mut hits = 0usize;
                for sy in 0..SUPERSAMPLE {
                    let v = (py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32) / s;
                    for sx in 0..SUPERSAMPLE {
                        let u = (px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32) / s;
                        hits += usize::from(inside(object, u, v));
                    }
                }
                if hits == 0 {
                    continue;
                }
                let coverage = hits as f32 / samples;
                for (c, &value) in colour.iter().enumerate() {
                    let p = &mut rgb[c * n + py * size + px];
                    *p = if hits == SUPERSAMPLE * SUPERSAMPLE {
                        value
                    } else {
                        *p * (1.0 - coverage) + value * coverage
                    };
                }
            }
        }
    }
    for p in &mut rgb {
        *p = *p * 2.0 - 1.0;
    }
    rgb
}

/// How a template wraps its objects: a prefix, a suffix, and whether a two-object caption names
/// the second object first (with the inverse relation).
struct Template {
    prefix: &'static str,
    suffix: &'static str,
    inverted: bool,
}

const fn template(prefix: &'static str, suffix: &'static str, inverted: bool) -> Template {
    Template {
        prefix,
        suffix,
        inverted,
    }
}

/// Templates for scenes without a relation (one object, or objects listed with "and").
const SINGLE: [Template; TEMPLATES] = [
    template("", "", false),
    template("a picture of ", "", false),
    template("an image of ", "", false),
    template("", " on a dark background", false),
];

/// Templates for two objects with a relation.
const PAIR: [Template; TEMPLATES] = [
    template("", "", false),
    template("a picture of ", "", false),
    template("", "", true),
    template("an image of ", "", false),
];

/// The caption of a scene without objects.
const EMPTY: &str = "an empty picture";

/// The caption of a scene with template `template` (taken modulo [`TEMPLATES`]).
///
/// One object: "a small red circle", "a picture of a small red circle", "an image of a small red
/// circle", "a small red circle on a dark background". Two objects with a relation: "a small red
/// circle above a large blue square", "a picture of …", the inverse phrasing "a large blue square
/// below a small red circle", "an image of …". Other scenes (no objects; two objects without a
/// relation; more than two objects, whose relation is ignored) get "an empty picture" or the
/// objects listed ("a small red circle and a large blue square") in the one-object templates.
pub fn caption(scene: &Scene, template: usize) -> String {
    let t = template % TEMPLATES;
    match (scene.objects.as_slice(), scene.relation) {
        ([], _) => EMPTY.to_string(),
        ([a, b], Some(relation)) => {
            let tp = &PAIR[t];
            let core = if tp.inverted {
                format!(
                    "{} {} {}",
                    b.phrase(),
                    relation.inverse().phrase(),
                    a.phrase()
                )
            } else {
                format!("{} {} {}", a.phrase(), relation.phrase(), b.phrase())
            };
            format!("{}{core}{}", tp.prefix, tp.suffix)
        }
        (objects, _) => {
            let tp = &SINGLE[t];
            let phrases: Vec<String> = objects.iter().map(Object::phrase).collect();
            let core = match phrases.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                _ => phrases.concat(),
            };
            format!("{}{core}{}", tp.prefix, tp.suffix)
        }
    }
}

/// Parses "a <size> <colour> <shape>"; the position is unknown and set to the centre.
fn parse_object(text: &str) -> Option<Object> {
    let words: Vec<&str> = text.split(' ').collect();
    let [article, size, colour, shape] = words.as_slice() else {
        return None;
    };
    if *article != "a" {
        return None;
    }
    Some(Object {
        shape: *Shape::ALL.iter().find(|s| s.name() == *shape)?,
        colour: *Colour::ALL.iter().find(|c| c.name() == *colour)?,
        size: *Size::ALL.iter().find(|s| s.name() == *size)?,
        x: 0.5,
        y: 0.5,
    })
}

/// Parses the part of a caption inside a template: objects in text order and the relation
/// phrase between them, if any.
fn parse_core(core: &str) -> Option<(Vec<Object>, Option<Relation>)> {
    for &relation in Relation::ALL {
        if let Some((a, b)) = core.split_once(&format!(" {} ", relation.phrase())) {
            return Some((vec![parse_object(a)?, parse_object(b)?], Some(relation)));
        }
    }
    let (rest, last) = match core.rsplit_once(" and ") {
        Some((rest, last)) => (Some(rest), last),
        None => (None, core),
    };
    let mut objects = Vec::new();
    if let Some(rest) = rest {
        for part in rest.split(", ") {
            objects.push(parse_object(part)?);
        }
    }
    objects.push(parse_object(last)?);
    Some((objects, None))
}

/// Parses a caption produced by [`caption`] back into its attributes: shape, colour and size per
/// object and the relation (positions are unknown and set to 0.5). Returns `None` for any text
/// that [`caption`] does not produce.
///
/// A two-object caption reads the same under the plain and the inverse phrasing; the parse
/// takes the plain reading, so compare with [`Scene::canonical`] (or [`Scene::same_description`]).
pub fn parse_caption(text: &str) -> Option<Scene> {
    if text == EMPTY {
        return Some(Scene {
            objects: Vec::new(),
            relation: None,
        });
    }
    for t in 0..TEMPLATES {
        for tp in [&PAIR[t], &SINGLE[t]] {
            let Some(core) = text
                .strip_prefix(tp.prefix)
                .and_then(|s| s.strip_suffix(tp.suffix))
            else {
                continue;
            };
            let Some((mut objects, mut relation)) = parse_core(core) else {
                continue;
            };
            if let (true, Some(r)) = (tp.inverted, relation) {
                objects.swap(0, 1);
                relation = Some(r.inverse());
            }
            let scene = Scene { objects, relation };
            // Only text that `caption` produces: this rejects stray spaces, lists with a
            // relation, relation phrases in the one-object templates, and so on.
            if caption(&scene, t) == text {
                return Some(scene);
            }
        }
    }
    None
}
