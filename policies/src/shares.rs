//! Splitting the GPU when requests add up to more than 100%.

/// Max-min fair shares of `capacity` over `demands`: whoever asks for less than an even split
/// gets it all, the rest share what is left evenly.
pub fn max_min(demands: &[f64], capacity: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|a, b| demands[*a].total_cmp(&demands[*b]));
    let mut shares = vec![0.0; demands.len()];
    let mut remaining = capacity;
    for (k, &i) in order.iter().enumerate() {
        shares[i] = demands[i].min(remaining / (order.len() - k) as f64);
        remaining -= shares[i];
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::max_min;

    #[test]
    fn small_demands_are_met_and_the_rest_split_evenly() {
        assert_eq!(max_min(&[10.0, 60.0, 70.0], 100.0), vec![10.0, 45.0, 45.0]);
        assert_eq!(max_min(&[20.0, 30.0], 100.0), vec![20.0, 30.0]);
        assert_eq!(max_min(&[80.0, 80.0, 80.0, 80.0], 100.0), vec![25.0; 4]);
    }
}
