//! The Dynamic Fusion Graph (Zadeh, Liang, Vanbriesen, Poria, Tong, Cambria, Chen,
//! Morency: "Multimodal Language Analysis in the Wild: CMU-MOSEI Dataset and Interpretable
//! Dynamic Fusion Graph", ACL 2018, Section 4), following the CMU-MultimodalSDK's
//! `mmsdk/mmmodelsdk/fusion/dynamic_fusion_graph/model.py` (A2Zadeh/CMU-MultimodalSDK);
//! mica's own code.
//!
//! Three singleton vertices `v_l`, `v_a`, `v_v` (the inputs) and one vertex per other
//! non-empty subset of {l, a, v}, in the SDK's order (l,a), (l,v), (a,v), (l,a,v). Vertex
//! `S` is a network over the concatenation of its proper non-empty subsets' vertices, each
//! scaled by its own efficacy `α`; the top vertex `T` (the graph's output) reads all seven
//! vertices the same way. The efficacies (2 + 2 + 2 + 6 + 7 = 19) come from one network
//! over the concatenated singletons.
//!
//! Choices where the SDK leaves the networks to the caller: every vertex network (and
//! `T`'s) is `Linear(in, gmfn_dfg_hidden) → ReLU → Linear(gmfn_dfg_hidden, gmfn_node)`;
//! the efficacy network is `Linear(Σ in, gmfn_dfg_hidden) → ReLU → Linear(…, 19)` followed
//! by a sigmoid (the paper's efficacies lie in [0, 1]; the SDK returns them unsquashed).

use super::mfn::Mlp2;
use crate::model::ctx::Ctx;
use crate::model::params::ParamSource;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::ops::sigmoid;

/// The multimodal vertices in the SDK's order, as bit sets over (l = 1, a = 2, v = 4).
pub const MULTI: [u8; 4] = [0b011, 0b101, 0b110, 0b111];
/// Number of efficacies of a three-modality graph.
pub const N_EFFICACIES: usize = 19;

/// The proper non-empty subsets of `key`, in `itertools.combinations` order (by size,
/// then lexicographically), as bit sets.
pub fn proper_subsets(key: u8) -> Vec<u8> {
    let elems: Vec<u8> = (0..3).filter(|i| key >> i & 1 == 1).collect();
    let mut out: Vec<u8> = elems.iter().map(|e| 1 << e).collect();
    if elems.len() == 3 {
        out.extend([0b011, 0b101, 0b110]);
    }
    if elems.len() < 2 {
        out.clear();
    }
    out
}

/// A Dynamic Fusion Graph over three modalities (module docs).
#[derive(Debug, Clone)]
pub struct Dfg {
    /// `dfg.vertex_{la,lv,av,lav}`: the multimodal vertex networks, in [`MULTI`] order.
    pub vertices: Vec<Mlp2>,
    /// `dfg.t_network`: the top vertex.
    pub top: Mlp2,
    /// `dfg.efficacy`: the efficacy network (sigmoid applied on its output).
    pub efficacy: Mlp2,
    /// Width of the singleton vertices (the inputs).
    pub dims: [usize; 3],
    /// Width of every other vertex (`gmfn_node`).
    pub node: usize,
}

impl Dfg {
    /// Width of vertex `s` (a singleton: its input width; else `node`).
    fn width(dims: [usize; 3], node: usize, s: u8) -> usize {
        match s {
            1 => dims[0],
            2 => dims[1],
            4 => dims[2],
            _ => node,
        }
    }

    /// Builds the graph for singleton widths `dims`, vertex width `node` and `hidden`
    /// units in every network.
    pub fn new(
        p: &mut dyn ParamSource,
        name: &str,
        dims: [usize; 3],
        node: usize,
        hidden: usize,
    ) -> Result<Self> {
        let input = |subs: &[u8]| subs.iter().map(|&s| Self::width(dims, node, s)).sum();
        let mut vertices = Vec::new();
        for (key, tag) in MULTI.iter().zip(["la", "lv", "av", "lav"]) {
            let din = input(&proper_subsets(*key));
            vertices.push(Mlp2::new(
                p,
                &format!("{name}.vertex_{tag}"),
                din,
                hidden,
                node,
                0.0,
            )?);
        }
        let mut top_in = proper_subsets(0b111);
        top_in.push(0b111);
        let top = Mlp2::new(
            p,
            &format!("{name}.t_network"),
            input(&top_in),
            hidden,
            node,
            0.0,
        )?;
        let efficacy = Mlp2::new(
            p,
            &format!("{name}.efficacy"),
            dims.iter().sum(),
            hidden,
            N_EFFICACIES,
            0.0,
        )?;
        Ok(Dfg {
            vertices,
            top,
            efficacy,
            dims,
            node,
        })
    }

    /// The top vertex `T` `[B, node]` and the efficacies `[B, 19]` for singleton vertices
    /// `v` (`[B, dims[m]]` each).
    pub fn forward(&self, ctx: &Ctx, v: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
        let eff = sigmoid(&self.efficacy.forward(ctx, &Tensor::cat(&v, 1)?)?)?;
        let mut out: [Option<Tensor>; 8] = Default::default();
        for (m, t) in v.iter().enumerate() {
            out[1 << m] = Some((*t).clone());
        }
        let mut at = 0;
        let weighted = |out: &[Option<Tensor>; 8], subs: &[u8], at: usize| -> Result<Tensor> {
            let parts = subs
                .iter()
                .enumerate()
                .map(|(j, &s)| {
                    let x = out[s as usize]
                        .as_ref()
                        .expect("vertex computed before use");
                    Ok(x.broadcast_mul(&eff.narrow(1, at + j, 1)?)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 1)?)
        };
        for (key, net) in MULTI.iter().zip(&self.vertices) {
            let subs = proper_subsets(*key);
            let input = weighted(&out, &subs, at)?;
            out[*key as usize] = Some(net.forward(ctx, &input)?);
            at += subs.len();
        }
        let mut subs = proper_subsets(0b111);
        subs.push(0b111);
        let top = self.top.forward(ctx, &weighted(&out, &subs, at)?)?;
        debug_assert_eq!(at + subs.len(), N_EFFICACIES);
        Ok((top, eff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_follow_the_sdk_order_and_count_19_efficacies() {
        assert_eq!(proper_subsets(0b011), vec![1, 2]);
        assert_eq!(proper_subsets(0b110), vec![2, 4]);
        assert_eq!(proper_subsets(0b111), vec![1, 2, 4, 3, 5, 6]);
        let n: usize = MULTI
            .iter()
            .map(|&k| proper_subsets(k).len())
            .sum::<usize>()
            + 7;
        assert_eq!(n, N_EFFICACIES);
    }
}
