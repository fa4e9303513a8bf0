//! Embedding lookup from blocks of rows, with a padding id.

use crate::common::{arr, dev};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::Array;

#[test]
fn lookup_from_blocks_with_padding_matches_reference() {
    use kiln_ops::lookup;
    let d = dev();
    let mut r = Rng::new(11);
    let (vocab, dim) = (23, 6);
    let table = r.vec(vocab * dim, -1.0, 1.0);
    // Repeats, the padding id, and an id out of range (a zero row, no gradient).
    let ids: Vec<i32> = vec![3, 0, 22, 3, 7, 0, 15, 3, 22, 40, 11, 7, 7, 1];
    let n = ids.len();
    let ida = Array::from_i32(&d, &ids, &[2, 7]).unwrap();
    let dy = r.vec(n * dim, -1.0, 1.0);
    let want_y = lookup::cpu::lookup(&to_f64(&table), dim, &ids);
    let want_dw = lookup::cpu::lookup_backward(vocab, dim, &ids, &to_f64(&dy), Some(0));
    // One block, and the same table in blocks of 10, 10 and 3 rows.
    for rows in [vec![vocab], vec![10, 10, 3]] {
        let mut blocks = Vec::new();
        let mut at = 0;
        for &n_rows in &rows {
            blocks.push(arr(
                &d,
                &table[at * dim..(at + n_rows) * dim],
                &[n_rows, dim],
            ));
            at += n_rows;
        }
        let refs: Vec<&Array> = blocks.iter().collect();
        let y = lookup::lookup(&d, &refs, &ida).unwrap();
        assert_eq!(y.shape, [2, 7, dim]);
        assert_close("lookup", &y.to_f32(&d).unwrap(), &want_y, 0.0, 0.0);
        let shapes: Vec<&[usize]> = blocks.iter().map(|b| &b.shape[..]).collect();
        let needs = vec![true; rows.len()];
        let grads = lookup::lookup_backward(
            &d,
            &shapes,
            &ida,
            &arr(&d, &dy, &[2, 7, dim]),
            Some(0),
            &needs,
        )
        .unwrap();
        let mut got = Vec::new();
        for g in grads {
            got.extend(g.unwrap().to_f32(&d).unwrap());
        }
        assert_close(
            &format!("lookup backward {rows:?}"),
            &got,
            &want_dw,
            1e-6,
            1e-6,
        );
    }
    let bad = arr(&d, &table[..4 * 5], &[4, 5]);
    let t = arr(&d, &table[..4 * dim], &[4, dim]);
    let e = lookup::lookup(&d, &[&t, &bad], &ida)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lookup"), "{e}");
    let e = lookup::check_ids_in_range(&[1, 7], 7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 7 at position 1 is outside [0, 7)"), "{e}");
}
