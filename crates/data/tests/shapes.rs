//! The procedural dataset: determinism, splits, caption round trips, rendering and coverage.

use std::collections::HashSet;

use unetlab_data::shapes::{
    caption, parse_caption, render, Colour, Object, Relation, Scene, Shape, Shapes, Size, Split,
    BACKGROUND, BORDER, GAP, MAX_SLOPE, TEMPLATES,
};
use unetlab_data::Example;

fn bits(image: &[f32]) -> Vec<u32> {
    image.iter().map(|v| v.to_bits()).collect()
}

/// Attributes in canonical order, computed here rather than with `Scene::canonical`.
fn attributes(scene: &Scene) -> (Vec<(Shape, Colour, Size)>, Option<Relation>) {
    let mut objects: Vec<_> = scene.objects.iter().map(Object::attributes).collect();
    let relation = match scene.relation {
        Some(Relation::RightOf) => {
            objects.reverse();
            Some(Relation::LeftOf)
        }
        Some(Relation::Below) => {
            objects.reverse();
            Some(Relation::Above)
        }
        other => other,
    };
    (objects, relation)
}

fn object(shape: Shape, colour: Colour, size: Size, x: f32, y: f32) -> Object {
    Object {
        shape,
        colour,
        size,
        x,
        y,
    }
}

#[test]
fn same_seed_and_index_give_bit_identical_examples() {
    let a = Shapes::new(32, 7);
    let b = Shapes::new(32, 7);
    for index in (0..40).chain([1_000_000, u64::MAX]) {
        let (x, y) = (a.train(index), b.train(index));
        assert_eq!(bits(&x.image), bits(&y.image), "train {index}");
        assert_eq!(x.caption, y.caption);
        assert_eq!(x.scene, y.scene);
        let (x, y) = (a.validation(index), b.validation(index));
        assert_eq!(bits(&x.image), bits(&y.image), "validation {index}");
        assert_eq!(x.caption, y.caption);
        // `scene` and `train` agree.
        let (scene, text) = a.scene(Split::Train, index);
        let example = a.train(index);
        assert_eq!(Some(scene), example.scene);
        assert_eq!(text, example.caption);
    }
}

#[test]
fn examples_have_the_documented_layout() {
    for size in [1, 17, 32] {
        let example: Example = Shapes::new(size, 3).train(5);
        assert_eq!(example.size, size);
        assert_eq!(example.image.len(), 3 * size * size);
        assert!(example.image.iter().all(|v| (-1.0..=1.0).contains(v)));
        let scene = example
            .scene
            .expect("procedural examples carry their scene");
        assert!((1..=2).contains(&scene.objects.len()));
        assert_eq!(scene.relation.is_some(), scene.objects.len() == 2);
    }
}

#[test]
fn different_indices_and_seeds_differ() {
    let data = Shapes::new(32, 11);
    let other_seed = Shapes::new(32, 12);
    let mut images = HashSet::new();
    for index in 0..200 {
        let example = data.train(index);
        assert!(
            images.insert(bits(&example.image)),
            "train {index} repeats an earlier image"
        );
        assert_ne!(
            bits(&example.image),
            bits(&other_seed.train(index).image),
            "seeds 11 and 12 agree at {index}"
        );
    }
    let captions: HashSet<String> = (0..200).map(|i| data.train(i).caption).collect();
    assert!(
        captions.len() > 150,
        "only {} distinct captions in 200 examples",
        captions.len()
    );
}

#[test]
fn validation_ignores_the_training_seed_and_is_disjoint_from_training() {
    let a = Shapes::new(32, 1);
    let b = Shapes::new(32, 0xdead_beef);
    let mut training = HashSet::new();
    for index in 0..300 {
        training.insert(bits(&a.train(index).image));
        training.insert(bits(&b.train(index).image));
    }
    let mut training_scenes = Vec::new();
    for index in 0..300 {
        training_scenes.push(a.scene(Split::Train, index).0);
    }
    for index in 0..300 {
        let (x, y) = (a.validation(index), b.validation(index));
        assert_eq!(
            bits(&x.image),
            bits(&y.image),
            "validation {index} depends on the training seed"
        );
        assert_eq!(x.caption, y.caption);
        assert!(
            !training.contains(&bits(&x.image)),
            "validation {index} equals a training image"
        );
        assert!(!training_scenes.contains(x.scene.as_ref().unwrap()));
        // The scene does not depend on the image size either.
        assert_eq!(
            Shapes::new(64, 5).scene(Split::Validation, index),
            a.scene(Split::Validation, index)
        );
    }
}

#[test]
fn captions_parse_back_for_every_template() {
    let data = Shapes::new(32, 21);
    for index in 0..1500 {
        let (scene, text) = data.scene(Split::Train, index);
        let parsed = parse_caption(&text).unwrap_or_else(|| panic!("cannot parse {text:?}"));
        assert_eq!(attributes(&parsed), attributes(&scene), "{text}");
        let mut phrasings = HashSet::new();
        for template in 0..TEMPLATES {
            let text = caption(&scene, template);
            let parsed = parse_caption(&text).unwrap_or_else(|| panic!("cannot parse {text:?}"));
            assert_eq!(
                attributes(&parsed),
                attributes(&scene),
                "template {template}: {text}"
            );
            assert_eq!(
                attributes(&parsed.canonical()),
                attributes(&scene.canonical())
            );
            assert!(parsed.same_description(&scene), "{text}");
            assert!(parsed.objects.iter().all(|o| o.x == 0.5 && o.y == 0.5));
            for object in &scene.objects {
                for word in [
                    object.shape.name(),
                    object.colour.name(),
                    object.size.name(),
                ] {
                    assert!(text.contains(word), "{text:?} lacks {word}");
                }
            }
            if let Some(relation) = scene.relation {
                assert!(
                    text.contains(relation.phrase()) || text.contains(relation.inverse().phrase()),
                    "{text:?} lacks the relation"
                );
            }
            phrasings.insert(text);
        }
        assert_eq!(
            phrasings.len(),
            TEMPLATES,
            "templates coincide for {scene:?}"
        );
        assert_eq!(caption(&scene, TEMPLATES + 1), caption(&scene, 1));
    }
    // A different description is not the same description.
    let (scene, _) = data.scene(Split::Train, 0);
    let mut changed = scene.clone();
    changed.objects[0].colour = if scene.objects[0].colour == Colour::Red {
        Colour::Blue
    } else {
        Colour::Red
    };
    assert!(!changed.same_description(&scene));
}

#[test]
fn known_captions_and_non_captions() {
    let a = object(Shape::Circle, Colour::Red, Size::Small, 0.5, 0.2);
    let b = object(Shape::Square, Colour::Blue, Size::Large, 0.5, 0.7);
    let scene = Scene {
        objects: vec![a, b],
        relation: Some(Relation::Above),
    };
    assert_eq!(
        caption(&scene, 0),
        "a small red circle above a large blue square"
    );
    assert_eq!(
        caption(&scene, 2),
        "a large blue square below a small red circle"
    );
    let single = Scene {
        objects: vec![a],
        relation: None,
    };
    assert_eq!(caption(&single, 1), "a picture of a small red circle");
    let parsed = parse_caption("a large blue square below a small red circle").unwrap();
    assert_eq!(attributes(&parsed), attributes(&scene));
    for text in [
        "",
        "a small red circle ",
        " a small red circle",
        "A small red circle",
        "a huge red circle",
        "a small red hexagon",
        "a small red circle to the left of",
        "a small red circle next to a large blue square",
        "a small red circle above a large blue square and a small green triangle",
        "a picture of a small red circle on a dark background",
        "an image of a small red circle above a large blue square on a dark background",
        "a small red circle and",
    ] {
        assert_eq!(parse_caption(text), None, "{text:?} parsed");
    }
}

#[test]
fn inverse_phrasings_have_one_canonical_form() {
    let left = object(Shape::Triangle, Colour::Green, Size::Small, 0.2, 0.5);
    let right = object(Shape::Circle, Colour::White, Size::Large, 0.7, 0.55);
    let a = Scene {
        objects: vec![left, right],
        relation: Some(Relation::LeftOf),
    };
    let b = Scene {
        objects: vec![right, left],
        relation: Some(Relation::RightOf),
    };
    assert_eq!(a.canonical(), b.canonical());
    assert_eq!(b.canonical(), a);
    let upper = object(Shape::Square, Colour::Yellow, Size::Large, 0.4, 0.25);
    let lower = object(Shape::Square, Colour::Purple, Size::Small, 0.45, 0.8);
    let a = Scene {
        objects: vec![upper, lower],
        relation: Some(Relation::Above),
    };
    let b = Scene {
        objects: vec![lower, upper],
        relation: Some(Relation::Below),
    };
    assert_eq!(a.canonical(), b.canonical());
    assert_eq!(b.canonical(), a);

    let data = Shapes::new(32, 4);
    for index in 0..500 {
        let (scene, _) = data.scene(Split::Validation, index);
        let canonical = scene.canonical();
        assert_eq!(canonical.canonical(), canonical, "canonical is idempotent");
        let Some(relation) = scene.relation else {
            continue;
        };
        let inverse = Scene {
            objects: vec![scene.objects[1], scene.objects[0]],
            relation: Some(relation.inverse()),
        };
        assert_eq!(inverse.canonical(), canonical);
        let (p, q) = (canonical.objects[0], canonical.objects[1]);
        match canonical.relation {
            Some(Relation::LeftOf) => assert!(p.x < q.x),
            Some(Relation::Above) => assert!(p.y < q.y),
            other => panic!("canonical relation {other:?}"),
        }
        // The captions of the inverse scene parse to the same canonical attributes.
        for template in 0..TEMPLATES {
            let parsed = parse_caption(&caption(&inverse, template)).unwrap();
            assert_eq!(attributes(&parsed.canonical()), attributes(&canonical));
        }
    }
}

#[test]
fn rendered_pixels_have_object_and_background_colours() {
    for (size, count) in [(32usize, 400u64), (64, 60)] {
        let data = Shapes::new(size, 9);
        for index in 0..count {
            let example = data.train(index);
            let scene = example.scene.clone().unwrap();
            let s = size as f32;
            for object in &scene.objects {
                let (px, py) = ((object.x * s) as usize, (object.y * s) as usize);
                for (c, value) in object.colour.rgb().iter().enumerate() {
                    let got = example.pixel(c, py, px);
                    assert!(
                        (got - (value * 2.0 - 1.0)).abs() < 1e-6,
                        "{size}px #{index}: centre of {object:?}: {got}"
                    );
                }
            }
            // Pixels whose square lies outside every object's bounding box show the background.
            let mut background = 0;
            for py in 0..size {
                for px in 0..size {
                    let outside = scene.objects.iter().all(|o| {
                        let h = o.half_extent() * s;
                        let (cx, cy) = (o.x * s, o.y * s);
                        px as f32 + 1.0 <= cx - h
                            || px as f32 >= cx + h
                            || py as f32 + 1.0 <= cy - h
                            || py as f32 >= cy + h
                    });
                    if outside {
                        background += 1;
                        for (c, value) in BACKGROUND.iter().enumerate() {
                            assert_eq!(
                                example.pixel(c, py, px),
                                value * 2.0 - 1.0,
                                "{size}px #{index} ({px}, {py})"
                            );
                        }
                    }
                }
            }
            assert!(
                background > size * size / 4,
                "{size}px #{index}: only {background} background pixels"
            );
        }
    }
    // The background is none of the object colours.
    for colour in Colour::ALL {
        let d: f32 = colour
            .rgb()
            .iter()
            .zip(BACKGROUND)
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(d > 0.3, "{colour:?} is close to the background");
    }
}

#[test]
fn object_sizes_match_their_extent() {
    // 100 px: a large square (0.42) covers 42 × 42 pixels exactly; a small circle of diameter
    // 25 px covers π·12.5² ≈ 491 pixels' worth of colour.
    let square = object(Shape::Square, Colour::Blue, Size::Large, 0.5, 0.5);
    let image = render(
        &Scene {
            objects: vec![square],
            relation: None,
        },
        100,
    );
    let blue = Colour::Blue.rgb()[2] * 2.0 - 1.0;
    let full = image[2 * 10_000..].iter().filter(|&&v| v == blue).count();
    assert_eq!(full, 42 * 42);

    let circle = object(Shape::Circle, Colour::Red, Size::Small, 0.5, 0.5);
    let image = render(
        &Scene {
            objects: vec![circle],
            relation: None,
        },
        100,
    );
    let (red, bg) = (Colour::Red.rgb()[0], BACKGROUND[0]);
    let coverage: f32 = image[..10_000]
        .iter()
        .map(|v| ((v + 1.0) / 2.0 - bg) / (red - bg))
        .sum();
    let expected = std::f32::consts::PI * 12.5 * 12.5;
    assert!(
        (coverage - expected).abs() < 0.01 * expected,
        "{coverage} vs {expected}"
    );

    // A triangle covers half its box.
    let triangle = object(Shape::Triangle, Colour::Red, Size::Large, 0.5, 0.5);
    let image = render(
        &Scene {
            objects: vec![triangle],
            relation: None,
        },
        100,
    );
    let coverage: f32 = image[..10_000]
        .iter()
        .map(|v| ((v + 1.0) / 2.0 - bg) / (red - bg))
        .sum();
    assert!((coverage - 42.0 * 42.0 / 2.0).abs() < 20.0, "{coverage}");
}

#[test]
fn relations_hold_geometrically() {
    let data = Shapes::new(32, 31);
    let eps = 1e-5;
    for index in 0..2000 {
        let (scene, _) = data.scene(Split::Train, index);
        for o in &scene.objects {
            let h = o.half_extent();
            for c in [o.x, o.y] {
                assert!(
                    c - h >= BORDER - eps && c + h <= 1.0 - BORDER + eps,
                    "#{index}: {o:?} leaves the image"
                );
            }
        }
        let Some(relation) = scene.relation else {
            continue;
        };
        let [a, b] = scene.objects.as_slice() else {
            panic!("#{index}: relation without two objects")
        };
        assert_ne!(
            a.attributes(),
            b.attributes(),
            "#{index}: identical objects"
        );
        // Offsets of b's centre from a's, along and across the relation's axis, signed so that
        // the relation means a positive offset along it.
        let (along, across) = match relation {
            Relation::LeftOf => (b.x - a.x, b.y - a.y),
            Relation::RightOf => (a.x - b.x, a.y - b.y),
            Relation::Above => (b.y - a.y, b.x - a.x),
            Relation::Below => (a.y - b.y, a.x - b.x),
        };
        let (ha, hb) = (a.half_extent(), b.half_extent());
        assert!(
            along >= ha + hb + GAP - eps,
            "#{index}: {relation:?} with too small a gap: {scene:?}"
        );
        assert!(
            across.abs() <= MAX_SLOPE * along + eps,
            "#{index}: {relation:?} not dominant: {scene:?}"
        );
    }
}

#[test]
fn first_two_thousand_examples_cover_every_attribute() {
    let data = Shapes::new(32, 2024);
    let (mut shapes, mut colours, mut sizes, mut relations) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    let (mut singles, mut pairs) = (0, 0);
    let mut forms = HashSet::new();
    let mut relation_counts = [0usize; 4];
    for index in 0..2000 {
        let (scene, text) = data.scene(Split::Train, index);
        for o in &scene.objects {
            shapes.insert(o.shape);
            colours.insert(o.colour);
            sizes.insert(o.size);
        }
        match scene.relation {
            Some(r) => {
                pairs += 1;
                relations.insert(r);
                relation_counts[Relation::ALL.iter().position(|&x| x == r).unwrap()] += 1;
            }
            None => singles += 1,
        }
        // Which template: the caption with the object words taken out.
        let mut form = text.clone();
        for o in &scene.objects {
            form = form.replacen(
                &format!("a {} {} {}", o.size.name(), o.colour.name(), o.shape.name()),
                "X",
                1,
            );
        }
        forms.insert((
            scene.objects.len(),
            form.replace(scene.relation.map_or("", |r| r.phrase()), "R"),
        ));
    }
    assert_eq!(shapes.len(), Shape::ALL.len());
    assert_eq!(colours.len(), Colour::ALL.len());
    assert_eq!(sizes.len(), Size::ALL.len());
    assert_eq!(relations.len(), Relation::ALL.len());
    assert!(
        singles > 200 && pairs > 1000,
        "{singles} single-object and {pairs} two-object scenes"
    );
    assert!(
        relation_counts.iter().all(|&n| n > pairs / 8),
        "relations unbalanced: {relation_counts:?}"
    );
    // Every template for both kinds of scene (the inverse phrasing shows the other relation, so
    // there are more forms of two-object captions than templates).
    let single_forms = forms.iter().filter(|(n, _)| *n == 1).count();
    let pair_forms = forms.iter().filter(|(n, _)| *n == 2).count();
    assert_eq!(single_forms, TEMPLATES, "{forms:?}");
    assert!(pair_forms > TEMPLATES, "{forms:?}");
}
