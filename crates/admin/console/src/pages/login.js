// The sign-in page: a user's name and password (a console session from POST /login)
// or an API token (the admin token `portico demo` and the first start print).

import * as api from '../api.js';
import { h, replace, errorBox, field } from '../dom.js';

/**
 * @param {HTMLElement} view
 * @param {() => Promise<void>} signedIn
 */
export async function renderLogin(view, signedIn) {
  const status = h('div', { 'aria-live': 'assertive' });
  const name = h('input', { type: 'text', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const tokenInput = h('input', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });

  /** @param {() => Promise<void>} attempt @param {HTMLButtonElement} button */
  const submit = async (attempt, button) => {
    replace(status);
    button.disabled = true;
    try {
      await attempt();
      await signedIn();
    } catch (e) {
      api.setToken(null);
      replace(status, errorBox(e instanceof api.ApiError && e.status === 401 ? { message: 'Sign-in refused: the name, password or token is not right.' } : e));
    } finally {
      button.disabled = false;
    }
  };

  const passwordButton = h('button', { type: 'submit' }, 'Sign in');
  const byPassword = h(
    'form',
    {
      class: 'card',
      'aria-labelledby': 'by-password',
      onsubmit: (/** @type {Event} */ e) => {
        e.preventDefault();
        void submit(async () => {
          const session = await api.call('POST', '/login', { body: { name: name.value, password: password.value } });
          api.setToken(session.token);
        }, passwordButton);
      },
    },
    h('h2', { id: 'by-password' }, 'With a password'),
    field('User', name),
    field('Password', password),
    passwordButton,
  );
  const tokenButton = h('button', { type: 'submit' }, 'Sign in with token');
  const byToken = h(
    'form',
    {
      class: 'card',
      'aria-labelledby': 'by-token',
      onsubmit: (/** @type {Event} */ e) => {
        e.preventDefault();
        void submit(async () => {
          api.setToken(tokenInput.value.trim());
          await api.get('/me', { signingIn: true });
        }, tokenButton);
      },
    },
    h('h2', { id: 'by-token' }, 'With an API token'),
    field('Token', tokenInput, 'The admin token printed at the first start (or by portico demo), or a user\'s API token. Kept for this tab only.'),
    tokenButton,
  );
  replace(
    view,
    h('h1', null, 'Sign in to Portico'),
    status,
    h('div', { class: 'login' }, byPassword, byToken),
  );
  name.focus();
}
