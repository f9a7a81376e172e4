"""Cross-modal attention of Pro-UIGAN: face features as queries, landmark features as keys, one attention
matrix shared by a face path and a landmark path (with a fused backward that keeps one N x N buffer)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormAct

PRIOR_FLOOR = 0.01  # input heatmaps are clipped to [floor, 1 - floor] before their logits are taken


def _tokens(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, h*d, H, W) -> (B, h, H*W, d). flatten/transpose, not view: channels-last inputs stay valid."""
    return x.flatten(2).unflatten(1, (heads, -1)).transpose(-1, -2)


def _image(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h, H*W, d) -> (B, h*d, H, W)."""
    b, h, _, d = tokens.shape
    return tokens.transpose(-1, -2).reshape(b, h * d, height, width)


class _CrossModalAttentionFn(torch.autograd.Function):
    """(q, k, face_v, landmark_v), each (B, N, d) -> (S @ landmark_v, S^T @ face_v, S) with S = softmax(q k^T).

    Autograd through the plain formula keeps two N x N gradients of S and adds them. The hand-written
    backward forms dL/dS = [dO_face, V_face] [V_landmark, dO_landmark]^T with one bmm and applies the softmax
    backward in place, using rowsum(S * dL/dS) = rowsum(dO_face * O_face) + rowsum(V_face * S dO_landmark)
    (FlashAttention's trick, on both paths), so backward holds a single N x N buffer beside S; about 2x
    faster on CPU. Computed in the dtype of q (bfloat16 under autocast), with the softmax in float32.
    """

    @staticmethod
    def forward(ctx, q, k, face_v, landmark_v):  # type: ignore[override]
        ctx.input_dtypes = tuple(t.dtype for t in (q, k, face_v, landmark_v))
        dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            q, k, face_v, landmark_v = (t.to(dtype) for t in (q, k, face_v, landmark_v))
            acc = torch.promote_types(dtype, torch.float32)  # float32 softmax for half types, float64 stays
            attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1, dtype=acc).to(dtype)
            face_out = torch.bmm(attn, landmark_v)  # (B, N, d)
            landmark_out = torch.bmm(attn.transpose(1, 2), face_v)  # (B, N, d)
        ctx.save_for_backward(q, k, face_v, landmark_v, attn, face_out)
        ctx.mark_non_differentiable(attn)
        return face_out, landmark_out, attn

    @staticmethod
    def backward(ctx, grad_face, grad_landmark, _grad_attn):  # type: ignore[override]
        q, k, face_v, landmark_v, attn, face_out = ctx.saved_tensors
        dtype = attn.dtype
        acc = torch.promote_types(dtype, torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            grad_face, grad_landmark = grad_face.to(dtype), grad_landmark.to(dtype)
            grad_landmark_v = torch.bmm(attn.transpose(1, 2), grad_face)  # (B, N, d)
            grad_face_v = torch.bmm(attn, grad_landmark)  # (B, N, d) = S dO_landmark
            row = (grad_face.to(acc) * face_out.to(acc)).sum(-1, keepdim=True)
            row += (face_v.to(acc) * grad_face_v.to(acc)).sum(-1, keepdim=True)  # (B, N, 1) = rowsum(S * dS)
            grad_logits = torch.bmm(
                torch.cat([grad_face, face_v], dim=-1), torch.cat([landmark_v, grad_landmark], dim=-1).transpose(1, 2)
            )  # (B, N, N) = dL/dS
            grad_logits.sub_(row).mul_(attn)  # softmax backward, in place
            grad_q = torch.bmm(grad_logits, k)
            grad_k = torch.bmm(grad_logits.transpose(1, 2), q)
        grads = (grad_q, grad_k, grad_face_v, grad_landmark_v)
        return tuple(g.to(d) for g, d in zip(grads, ctx.input_dtypes))


def cross_modal_attention(
    q: torch.Tensor, k: torch.Tensor, face_v: torch.Tensor, landmark_v: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, h, N, d) q, k, face_v, landmark_v -> (S landmark_v, S^T face_v, S), S = softmax(scale q k^T) (B,h,N,N)."""
    b, h = q.shape[:2]
    if scale != 1.0:
        q = q * scale  # on (N, d), cheaper than scaling the (N, N) logits
    face_t, landmark_t, attn = _CrossModalAttentionFn.apply(
        q.flatten(0, 1), k.flatten(0, 1), face_v.flatten(0, 1), landmark_v.flatten(0, 1)
    )
    return face_t.unflatten(0, (b, h)), landmark_t.unflatten(0, (b, h)), attn.unflatten(0, (b, h))


class CrossModalAttention(nn.Module):
    """Face/landmark refinement block: one attention matrix shared by a face path and a landmark path.

    With Q from the face, K from the landmarks and a value from each (all (B, h, N, d) over N = H*W tokens):

        S = softmax(scale * Q K^T)            (B, h, N, N), rows (face positions) sum to 1
        face features     = S V_landmarks + Q (the landmark values each face position attends to)
        landmark features = S^T V_face + K    (the face values routed back along the same matrix)

    then a 3x3 conv + tanh gives the refined face and a 3x3 conv + sigmoid the refined heatmaps. With
    `residual_heatmaps` (not the reference) that conv corrects the input heatmaps' logits instead, so the refined
    maps start as the prior's and cannot be worse than it at initialisation. The reference
    uses 1 head and no scaling (scale = 1), so logits grow with d; `scale=True` divides them by sqrt(d).

    The face path is exactly scaled_dot_product_attention(Q, K, V_landmarks). The landmark path is not: S^T
    sums over queries with rows normalised per query, which no softmax-over-keys call expresses, so the
    reference form materialises S once and does both matmuls (`cross_modal_attention`, with a fused
    backward; O(N^2) memory: 64 MiB per sample and head in float32 at 64x64). `symmetric=True` replaces
    S^T V_face by softmax(scale * K Q^T) V_face (the landmarks query the face with their own normalisation);
    then both paths are SDPA calls (flash / memory-efficient kernels on GPU). Not the reference; off by default.
    """

    def __init__(
        self,
        heatmap_channels: int,
        *,
        channels: int = 128,
        attn_channels: int = 32,
        heads: int = 1,
        scale: bool = False,
        symmetric: bool = False,
        norm: str = "batch",
        residual_heatmaps: bool = False,
    ) -> None:
        super().__init__()
        self.residual_heatmaps = residual_heatmaps
        if attn_channels % heads:
            raise ValueError(f"attn_channels ({attn_channels}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(attn_channels // heads) if scale else 1.0
        self.symmetric = symmetric
        self.face_branch = ConvNormAct(3, channels, 3, norm=norm)
        self.landmark_branch = ConvNormAct(heatmap_channels, channels, 3, norm=norm)
        self.query = nn.Conv2d(channels, attn_channels, 1)  # from the face
        self.key = nn.Conv2d(channels, attn_channels, 1)  # from the landmarks
        self.face_value = nn.Conv2d(channels, attn_channels, 1)
        self.landmark_value = nn.Conv2d(channels, attn_channels, 1)
        self.face_head = nn.Sequential(nn.Conv2d(attn_channels, 3, 3, 1, 1), nn.Tanh())
        self.heatmap_head = nn.Sequential(nn.Conv2d(attn_channels, heatmap_channels, 3, 1, 1))  # logits; the key
        # keeps the name the released weights have (heatmap_head.0)

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, h, N, d) queries and keys -> S = softmax(scale * Q K^T), (B, h, N, N)."""
        return torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)

    def forward(
        self, face: torch.Tensor, heatmaps: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """face (B,3,H,W), heatmaps (B,L,H,W) -> refined face (B,3,H,W), refined heatmaps (B,L,H,W)[, S]."""
        height, width = face.shape[-2:]
        face_feat = self.face_branch(face)  # (B, 128, H, W)
        landmark_feat = self.landmark_branch(heatmaps)  # (B, 128, H, W)
        q = self.query(face_feat)  # (B, 32, H, W)
        k = self.key(landmark_feat)
        q_t, k_t = _tokens(q, self.heads), _tokens(k, self.heads)  # (B, h, N, d)
        face_v = _tokens(self.face_value(face_feat), self.heads)
        landmark_v = _tokens(self.landmark_value(landmark_feat), self.heads)
        attn = None
        if self.symmetric:
            face_t = F.scaled_dot_product_attention(q_t, k_t, landmark_v, scale=self.scale)
            landmark_t = F.scaled_dot_product_attention(k_t, q_t, face_v, scale=self.scale)
            if return_attention:
                attn = self.attention(q_t, k_t)
        else:
            # (B, h, N, d), (B, h, N, d), (B, h, N, N)
            face_t, landmark_t, attn = cross_modal_attention(q_t, k_t, face_v, landmark_v, self.scale)
        face_out = _image(face_t, height, width) + q  # residual on the query, as the reference
        landmark_out = _image(landmark_t, height, width) + k  # residual on the key
        logits = self.heatmap_head(landmark_out)
        if self.residual_heatmaps:  # a correction of the prior's logits: the refinement starts where the prior is
            logits = logits + torch.logit(heatmaps.clamp(PRIOR_FLOOR, 1 - PRIOR_FLOOR)).to(logits.dtype)
        refined = (self.face_head(face_out), torch.sigmoid(logits))
        return (*refined, attn) if return_attention else refined
