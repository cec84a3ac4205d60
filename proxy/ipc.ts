// Node IPC channels between the primary and its worker processes (process, ChildProcess, cluster Worker),
// as a small interface: the worker pool speaks over them, and so may whatever the primary serves to its
// workers (the engine, installs), each with messages of its own tag.
/** What the serving and calling sides need of a Node IPC endpoint (process, ChildProcess, cluster Worker). */
export interface IpcChannel {
  send(message: unknown): void;
  onMessage(listener: (message: any) => void): () => void;
  /** The channel closed (the other process exited or disconnected). */
  onClose(listener: () => void): () => void;
}

interface IpcEndpoint {
  send?: (message: any, sendHandle?: any, options?: any, callback?: (error: Error | null) => void) => boolean;
  connected?: boolean;
  isConnected?: () => boolean;
  on(event: string, listener: (...args: any[]) => void): unknown;
  removeListener(event: string, listener: (...args: any[]) => void): unknown;
}

/** An IpcChannel over `process` (in a child), a ChildProcess or a cluster Worker. */
export function ipcChannel(endpoint: IpcEndpoint): IpcChannel {
  const on = (event: string, listener: (...args: any[]) => void) => {
    endpoint.on(event, listener);
    return () => void endpoint.removeListener(event, listener);
  };
  return {
    send(message) {
      const open = endpoint.isConnected ? endpoint.isConnected() : endpoint.connected !== false;
      // A closed channel is reported through onClose; the callback keeps the send error from becoming an 'error' event.
      if (open && endpoint.send) endpoint.send(message, undefined, undefined, () => {});
    },
    onMessage: (listener) => on('message', listener),
    onClose: (listener) => on('disconnect', listener),
  };
}
