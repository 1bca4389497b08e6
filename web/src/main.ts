// Entry point: loads the styles and starts the app once the page's DOM (index.html) is there.

import './style.css';
import { App } from './app';

function start(): void {
  new App().boot();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
