"""Figures and tables for the chapters: learning curves, bars with error bars, confusion
matrices, heatmaps, and markdown tables of mean ± std."""
import statistics

import matplotlib.pyplot as plt
import torch


def mean_std(values):
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, scale=100, digits=1):
    """'mean ± std' of ``values`` (accuracies in [0, 1] shown as percent by default)."""
    m, s = mean_std(values)
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown(rows, header):
    """A markdown table as text (what ``kdnb report`` prints); a bare pipe is escaped, since it
    would end the cell."""
    cell = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def table(rows, header):
    """A markdown table (shown as a table in JupyterLab and on the site)."""
    from IPython.display import Markdown
    return Markdown(markdown(rows, header))


def curves(histories, key="val_acc", ax=None, title=None, ylabel="validation accuracy"):
    """One line per named run; ``histories`` maps a name to a list of histories (seeds),
    drawn as the mean with a band of ± one std."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name, hs in histories.items():
        y = torch.tensor([h[key] for h in hs], dtype=torch.float64)
        m, s = y.mean(0), (y.std(0) if len(hs) > 1 else torch.zeros(y.shape[1]))
        x = range(1, len(m) + 1)
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def bars(results, ax=None, ylabel="test accuracy (%)", title=None):
    """Mean ± std bars; ``results`` maps a name to a list of accuracies in [0, 1]."""
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    names = list(results)
    ms = [mean_std(results[n]) for n in names]
    ax.bar(names, [m * 100 for m, _ in ms], yerr=[s * 100 for _, s in ms], capsize=6,
           color=["#999", "#3a7", "#37a", "#a73", "#a37"][:len(names)])
    lo = min(m - s for m, s in ms) * 100
    ax.set_ylim(max(0, lo - 5), min(100, max(m + s for m, s in ms) * 100 + 2))
    ax.set(ylabel=ylabel, title=title)
    return ax


def confusion(logits, labels, classes):
    """Counts: rows are true classes, columns predictions."""
    m = torch.zeros(classes, classes, dtype=torch.long)
    m.index_put_((labels.cpu(), logits.argmax(1).cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    return m


def confusion_plot(matrix, ax=None, title=None):
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in zip(torch.cartesian_prod(torch.arange(len(matrix)), torch.arange(len(matrix))).tolist(),
                         matrix.flatten().tolist()):
        if v:
            ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(len(matrix)), yticks=range(len(matrix)))
    return ax


def heatmap(values, rows, cols, ax=None, title=None, fmt="{:+.1f}", std=None, xlabel="T", ylabel="α"):
    """A grid of numbers (e.g. accuracy gain) with each cell labelled, ± std when given."""
    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    v = torch.as_tensor(values, dtype=torch.float64)
    lim = float(v.abs().max()) or 1.0
    im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            text = fmt.format(float(v[i, j])) + (f"\n±{float(std[i][j]):.1f}" if std is not None else "")
            dark = abs(float(v[i, j])) > 0.6 * lim  # the colormap's ends are dark: white text there
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set(xticks=range(len(cols)), xticklabels=cols, yticks=range(len(rows)), yticklabels=rows,
           xlabel=xlabel, ylabel=ylabel, title=title)
    plt.colorbar(im, ax=ax)
    return ax


def paired(treated, baseline):
    """Per-seed differences ``treated[i] − baseline[i]`` of runs that share seed ``i`` (initial
    weights and batches): ``(mean, std, standard error)`` of the differences. Pairing removes the
    seed-to-seed spread both runs share, which an unpaired comparison counts as noise."""
    if len(treated) != len(baseline) or len(treated) < 2:
        raise ValueError(f"treated and baseline must be runs over the same >= 2 seeds, got {len(treated)} and "
                         f"{len(baseline)}")
    m, s = mean_std([t - b for t, b in zip(treated, baseline)])
    return m, s, s / len(treated) ** 0.5


def gain(treated, baseline):
    """Mean paired difference and its standard error (see :func:`paired`)."""
    m, _, se = paired(treated, baseline)
    return m, se


def views(x, make_views, ax=None, seed=0, count=3):
    """One training input and ``count`` of its views (``kdnb.augment``): a signal drawn over its
    views, or an image beside them."""
    g = torch.Generator().manual_seed(seed)
    shown = make_views(x[None].repeat(count, *[1] * x.dim()), g)
    if x.dim() == 2:  # a signal (channels, length)
        ax = ax or plt.subplots(figsize=(6.5, 2.8))[1]
        for i, v in enumerate(shown):
            ax.plot(v[0], lw=1, alpha=0.8, label=f"view {i + 1}")
        ax.plot(x[0], lw=2.5, color="k", label="the signal")
        ax.set(xlabel="sample", ylabel="value (standardised)")
        ax.legend(fontsize=8, ncol=4, loc="upper right")
        return ax
    ax = ax or plt.subplots(figsize=(6.5, 2.8))[1]
    images = torch.cat([x[None], shown]).float()
    images = (images - images.amin()) / (images.amax() - images.amin()).clamp_min(1e-6)
    ax.imshow(torch.cat(list(images), dim=-1).permute(1, 2, 0).squeeze(-1), cmap="gray")
    ax.set(title="the image and its views", xticks=[], yticks=[])
    return ax
