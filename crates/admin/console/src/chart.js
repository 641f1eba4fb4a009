// A small SVG line chart of its own (no charting library): the instance's requests
// per second and error rate over the last minutes, sampled by the console from the
// admin's convergence answer while the page is open.

import { h } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
/** Samples kept per instance: ten minutes at one per five seconds. */
const KEEP = 120;

/** @type {Map<string, {at: number, rps: number, errorRate: number}[]>} */
const samples = new Map();

/**
 * Records a sample of an instance's load.
 * @param {string} key @param {number} rps @param {number} errorRate 0 to 1
 */
export function record(key, rps, errorRate) {
  const list = samples.get(key) ?? [];
  list.push({ at: Date.now(), rps, errorRate });
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
  samples.set(key, list);
}

/** @param {string} tag @param {Record<string, string | number>} attrs */
function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/**
 * A chart of one series of an instance's samples.
 * @param {string} key
 * @param {'rps' | 'errorRate'} series
 * @param {string} title
 */
export function chart(key, series, title) {
  const list = samples.get(key) ?? [];
  const width = 360;
  const height = 90;
  const pad = 4;
  const values = list.map((s) => (series === 'rps' ? s.rps : s.errorRate * 100));
  const max = Math.max(series === 'rps' ? 1 : 5, ...values);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img' });
  const latest = values.length ? values[values.length - 1] : null;
  const label = `${title}: ${latest === null ? 'no sample yet' : series === 'rps' ? `${latest.toFixed(2)} requests/s` : `${latest.toFixed(1)} % errors`}, scale to ${max.toFixed(series === 'rps' ? 1 : 0)}`;
  root.setAttribute('aria-label', label);
  root.append(svg('line', { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, class: 'axis' }));
  if (values.length >= 2) {
    const t0 = list[0].at;
    const span = Math.max(1, list[list.length - 1].at - t0);
    const points = list
      .map((s, i) => {
        const x = pad + ((s.at - t0) / span) * (width - 2 * pad);
        const y = height - pad - (values[i] / max) * (height - 2 * pad);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(' ');
    root.append(svg('polyline', { points, class: series === 'rps' ? 'line' : 'line bad' }));
  }
  return h('figure', { class: 'chart-box' }, root, h('figcaption', null, label));
}
