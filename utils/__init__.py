from utils.metrics import calc_map_k, p_top_k, pr_curve

__all__ = ['calc_map_k', 'pr_curve', 'p_top_k']
