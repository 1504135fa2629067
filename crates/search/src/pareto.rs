//! Pareto dominance (all objectives minimised), constrained domination, non-dominated sorting and
//! crowding distance: the pieces of NSGA-II and of every front a search reports.

/// A candidate as the strategies see it: objective values oriented for minimisation, and how far
/// it breaks the constraints (0 when feasible; infinite for an invalid combination).
#[derive(Debug, Clone, PartialEq)]
pub struct Fitness {
    /// Objective values, smaller is better.
    pub objectives: Vec<f64>,
    /// Sum of relative constraint violations; 0 when feasible.
    pub violation: f64,
}

impl Fitness {
    /// An invalid combination: worse than every valid one.
    pub fn invalid(objectives: usize) -> Fitness {
        Fitness {
            objectives: vec![f64::INFINITY; objectives],
            violation: f64::INFINITY,
        }
    }

    /// Whether every constraint holds.
    pub fn feasible(&self) -> bool {
        self.violation == 0.0
    }
}

/// Whether `a` Pareto-dominates `b`: no worse in every objective, better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// Deb's constrained domination: a feasible candidate beats an infeasible one, of two infeasible
/// the smaller violation wins, of two feasible Pareto dominance decides.
pub fn constrained_dominates(a: &Fitness, b: &Fitness) -> bool {
    match (a.feasible(), b.feasible()) {
        (true, false) => true,
        (false, true) => false,
        (false, false) => a.violation < b.violation,
        (true, true) => dominates(&a.objectives, &b.objectives),
    }
}

/// The front rank of every candidate under constrained domination (0 = non-dominated), by Deb's
/// fast non-dominated sort.
pub fn ranks(fitness: &[Fitness]) -> Vec<usize> {
    let n = fitness.len();
    let mut dominated_by = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            if constrained_dominates(&fitness[i], &fitness[j]) {
                dominates_list[i].push(j);
                dominated_by[j] += 1;
            } else if constrained_dominates(&fitness[j], &fitness[i]) {
                dominates_list[j].push(i);
                dominated_by[i] += 1;
            }
        }
    }
    let mut rank = vec![usize::MAX; n];
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    let mut r = 0;
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            rank[i] = r;
            for &j in &dominates_list[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        current = next;
        r += 1;
    }
    rank
}

/// Crowding distance of each member of one front (`members` index into `fitness`): the sum over
/// objectives of the normalised gap between its neighbours; the extremes get infinity.
pub fn crowding(fitness: &[Fitness], members: &[usize]) -> Vec<f64> {
    let mut distance = vec![0.0; members.len()];
    if members.len() <= 2 {
        return vec![f64::INFINITY; members.len()];
    }
    let objectives = fitness[members[0]].objectives.len();
    for m in 0..objectives {
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|&a, &b| {
            fitness[members[a]].objectives[m]
                .total_cmp(&fitness[members[b]].objectives[m])
                .then(a.cmp(&b))
        });
        let value = |k: usize| fitness[members[order[k]]].objectives[m];
        let span = value(order.len() - 1) - value(0);
        distance[order[0]] = f64::INFINITY;
        distance[order[order.len() - 1]] = f64::INFINITY;
        if span > 0.0 && span.is_finite() {
            for k in 1..order.len() - 1 {
                distance[order[k]] += (value(k + 1) - value(k - 1)) / span;
            }
        }
    }
    distance
}

/// Indices of the feasible candidates no other feasible candidate dominates, in index order.
/// Sorts by the objectives first, so it costs about N·(front size) comparisons.
pub fn feasible_front(fitness: &[Fitness]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fitness.len())
        .filter(|&i| fitness[i].feasible())
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&fitness[a].objectives, &fitness[b].objectives);
        x.iter()
            .zip(y)
            .map(|(p, q)| p.total_cmp(q))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    // In lexicographic order, a candidate can only be dominated by one before it, and if it is,
    // some member of the front so far dominates it too.
    let mut front: Vec<usize> = Vec::new();
    for i in order {
        if !front
            .iter()
            .any(|&f| dominates(&fitness[f].objectives, &fitness[i].objectives))
        {
            front.push(i);
        }
    }
    front.sort_unstable();
    front
}
