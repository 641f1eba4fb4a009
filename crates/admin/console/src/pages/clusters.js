// Clusters: register a cluster by its agent's address (the agent token is generated
// and shown once when left empty), see how this admin reaches each agent, the
// cluster's Kubernetes face and what the cross-cluster controller reports of it,
// change the address, remove a cluster.

import * as api from '../api.js';
import { h, replace, table, errorBox, confirmDialog, field, toast, badge, ago, notice } from '../dom.js';

/** @param {any} agent */
export function agentBadge(agent) {
  const state = agent?.state;
  if (!state) return badge('not yet polled', 'info');
  const tone = state === 'ok' ? 'ok' : state === 'unverified' ? 'warn' : 'bad';
  return h('span', { title: agent.error ?? '' }, badge(state, tone), agent.last_contact_ms ? h('small', { class: 'muted' }, ` ${ago(agent.last_contact_ms)}`) : null);
}

/** @param {any} status */
export function kubernetesBadge(status) {
  if (!status) return badge('no report', 'info');
  const tone = status.link === 'synced' ? 'ok' : status.link === 'lost' ? 'bad' : 'warn';
  return h(
    'span',
    null,
    badge(status.link, tone),
    status.lost_for_seconds ? h('small', null, ` lost ${status.lost_for_seconds} s`) : null,
    status.last_synced_ms ? h('small', { class: 'muted' }, ` synced ${ago(status.last_synced_ms)}`) : null,
  );
}

/**
 * What a peak cluster gives, per Service.
 * @param {any} status the controller's report
 */
export function contributionsList(status) {
  if (!status?.contributions?.length) return '—';
  return h('ul', { class: 'plain' }, status.contributions.map((/** @type {any} */ c) => h('li', null, h('code', null, c.service), `: ${c.endpoints}`)));
}

/** @param {import('../app.js').Ctx} ctx */
export async function renderClusters(ctx) {
  const listed = await api.get('/clusters');
  const platform = ctx.me.user.platform_admin;
  const status = h('div', { 'aria-live': 'polite' });
  const formSlot = h('div');

  /** @param {any} [existing] */
  const editor = (existing) => {
    const name = h('input', { type: 'text', value: existing?.name ?? '', required: true, readonly: existing ? true : null });
    const address = h('input', { type: 'url', value: existing?.agent_address ?? '', required: true, placeholder: 'http://10.0.0.5:9190' });
    const tokenInput = h('input', { type: 'password', autocomplete: 'new-password', placeholder: existing ? 'leave empty to keep the current token' : 'leave empty to generate one' });
    const errors = h('div');
    const save = h('button', { type: 'submit' }, existing ? 'Save' : 'Register cluster');
    return h(
      'form',
      {
        class: 'card',
        'aria-label': existing ? `edit cluster ${existing.name}` : 'register a cluster',
        onsubmit: async (/** @type {Event} */ e) => {
          e.preventDefault();
          replace(errors);
          save.disabled = true;
          try {
            /** @type {Record<string, any>} */
            const body = { name: name.value, agent_address: address.value };
            if (tokenInput.value) body.agent_token = tokenInput.value;
            if (existing?.kubernetes) body.kubernetes = existing.kubernetes;
            const saved = existing
              ? await api.call('PUT', `/clusters/${encodeURIComponent(existing.name)}`, { body })
              : await api.call('POST', '/clusters', { body });
            await renderClusters(ctx);
            if (!existing && saved.agent_token) {
              ctx.view.prepend(
                h('div', { class: 'notice warn', role: 'status' }, `Registered ${saved.name}. Its agent token, shown only now — start the agent with PORTICO_AGENT_TOKEN=`, h('code', { class: 'secret' }, saved.agent_token)),
              );
            } else ctx.view.prepend(notice(existing ? `Saved ${saved.name}.` : `Registered ${saved.name}; its agent is being polled.`));
          } catch (err) {
            replace(errors, errorBox(err));
          } finally {
            save.disabled = false;
          }
        },
      },
      h('h2', null, existing ? `Edit ${existing.name}` : 'Register a cluster'),
      errors,
      field('Name', name),
      field('Agent address', address, 'The base URL of the cluster\'s agent.'),
      field('Agent token', tokenInput, 'The PORTICO_AGENT_TOKEN the agent was started with.'),
      save,
    );
  };

  const rows = listed.items.map((/** @type {any} */ c) => [
    h('strong', null, c.name),
    h('code', null, c.agent_address),
    agentBadge(c.agent),
    c.kubernetes ? `${c.kubernetes.role}${c.kubernetes.provider ? ` (${c.kubernetes.provider})` : ''}` : '—',
    c.kubernetes ? kubernetesBadge(c.kubernetes_status) : '—',
    c.kubernetes_status ? h('span', null, `${c.kubernetes_status.services} services, ${c.kubernetes_status.endpoints_contributed} endpoints`, contributionsList(c.kubernetes_status)) : '—',
    platform
      ? h(
          'span',
          { class: 'row-actions' },
          h('button', { type: 'button', class: 'link', onclick: () => replace(formSlot, editor(c)) }, 'Edit'),
          h(
            'button',
            {
              type: 'button',
              class: 'link danger',
              onclick: async () => {
                if (!(await confirmDialog(`Remove cluster ${c.name}?`, h('p', null, 'Refused while its instances hold config.'), 'Remove'))) return;
                try {
                  await api.call('DELETE', `/clusters/${encodeURIComponent(c.name)}`);
                  toast(`Removed ${c.name}`);
                  await renderClusters(ctx);
                } catch (err) {
                  replace(status, errorBox(err));
                }
              },
            },
            'Remove',
          ),
        )
      : null,
  ]);
  replace(
    ctx.view,
    h('h1', null, 'Clusters'),
    status,
    table(['Cluster', 'Agent', 'Agent link', 'Kubernetes role', 'Cross-cluster link', 'Contributes', ''], rows, 'No cluster registered yet.', 'clusters'),
    platform ? h('button', { type: 'button', onclick: () => { replace(formSlot, editor()); formSlot.querySelector('input')?.focus(); } }, 'Register a cluster') : null,
    formSlot,
  );
}
